"""Extraction methods against references computed from HF ``output_hidden_states`` one prompt
at a time (no padding), scikit-learn PCA / LogisticRegression, and manual projections."""
import numpy as np
import pytest
import torch

import mindscope.steering as st

POS = ["I love this, it is great", "What a wonderful day", "Alice met Bob in the garden"]
NEG = ["I hate this, it is bad", "What a terrible day", "The fox jumps over the dog"]


def hidden(lm, text, layer, chat=False):
    """HF reference: resid_post.layer of one unpadded prompt -> (T, d)."""
    b = lm.tokenize([text], chat=chat)
    out = lm.model(input_ids=b.input_ids, output_hidden_states=True)
    return out.hidden_states[layer + 1][0].float()


def test_mean_difference_equals_manual_means(tiny):
    lm = tiny("llama")
    v = st.mean_difference(lm, POS, NEG, "resid_post.2", positions="last")
    ref = (torch.stack([hidden(lm, t, 2)[-1] for t in POS]).mean(0)
           - torch.stack([hidden(lm, t, 2)[-1] for t in NEG]).mean(0))
    torch.testing.assert_close(v.data, ref, atol=1e-4, rtol=1e-4)
    assert v.site == "resid_post.2" and v.model == lm.name and v.method == "mean_diff"
    # "all" positions: each prompt's token mean, then the mean over prompts (sets of any size)
    w = st.mean_difference(lm, POS, NEG[:2], "resid_post.1", positions="all")
    ref = (torch.stack([hidden(lm, t, 1).mean(0) for t in POS]).mean(0)
           - torch.stack([hidden(lm, t, 1).mean(0) for t in NEG[:2]]).mean(0))
    torch.testing.assert_close(w.data, ref, atol=1e-4, rtol=1e-4)


def test_mean_difference_many_sites_gives_a_set(tiny):
    lm = tiny("llama")
    s = st.mean_difference(lm, POS, NEG, "resid_post.1:3", paired=True)
    assert isinstance(s, st.VectorSet) and s.sites == ["resid_post.1", "resid_post.2"]
    one = st.mean_difference(lm, POS, NEG, "resid_post.2")
    torch.testing.assert_close(s["resid_post.2"].data, one.data)
    assert set(s.meta["pair_std"]) == {"resid_post.1", "resid_post.2"}
    with pytest.raises(ValueError, match="paired=True"):
        st.mean_difference(lm, POS, NEG[:2], "resid_post.1", paired=True)


def test_concept_vector_follows_the_protocol(tiny):
    lm = tiny("llama")
    base = ["music", "bread", "the mountains", "dogs"]
    v = st.concept_vector(lm, "the ocean", "resid_post.2", baseline_words=base)

    def last(word):  # chat-templated, generation prompt included, last token
        p = lm.chat([{"role": "user", "content": f"Tell me about {word}"}])
        assert p.text.endswith("<|im_start|>assistant\n")
        b = lm.tokenize([p])
        return lm.model(input_ids=b.input_ids, output_hidden_states=True).hidden_states[3][0, -1]

    ref = last("the ocean") - torch.stack([last(w) for w in base]).mean(0)
    torch.testing.assert_close(v.data, ref, atol=1e-4, rtol=1e-4)
    assert v.normalisation == "none" and v.method == "concept"
    s = st.concept_vectors(lm, ["the ocean", "music"], "resid_post.2", baseline_words=base)
    # concept words are removed from the baseline
    ref2 = last("the ocean") - torch.stack([last(w) for w in base[1:]]).mean(0)
    torch.testing.assert_close(s["the ocean"].data, ref2, atol=1e-4, rtol=1e-4)
    multi = st.concept_vector(lm, "the ocean", "resid_post.1:3", baseline_words=base)
    torch.testing.assert_close(multi["resid_post.2"].data, v.data)


def test_pca_direction_matches_sklearn(tiny):
    from sklearn.decomposition import PCA

    lm = tiny("llama")
    pos, neg = POS + ["Yes yes yes", "def add"], NEG + ["No no no", "return a"]
    v = st.pca_direction(lm, pos, neg, "resid_post.2")
    diffs = torch.stack([hidden(lm, p, 2)[-1] - hidden(lm, n, 2)[-1] for p, n in zip(pos, neg)])
    sk = PCA(1).fit(diffs.double().numpy())
    cos = float(v.data.double().numpy() @ sk.components_[0])
    assert abs(abs(cos) - 1) < 1e-4
    assert abs(v.meta["explained_variance_ratio"]["resid_post.2"] - sk.explained_variance_ratio_[0]) < 1e-4
    P = torch.stack([hidden(lm, p, 2)[-1] for p in pos]) @ v.data
    N = torch.stack([hidden(lm, n, 2)[-1] for n in neg]) @ v.data
    assert int((P > N).sum()) >= len(pos) / 2  # sign convention
    assert v.normalisation == "unit" and abs(float(v.norm) - 1) < 1e-5


def test_response_means_equal_manual_assistant_token_mean(tiny):
    lm = tiny("llama")
    qs = ["Tell me about music", "Alice met Bob"]
    sps = {"pirate": "You are a pirate.", "default": "You are an assistant."}
    responses = {"pirate": ["Yes the ocean", "No"], "default": ["Ok the dog", "Yes"]}
    s = st.response_means(lm, qs, sps, "resid_post.1", responses=responses)
    assert s.names == ["pirate", "default"]
    for key in sps:
        rows = []
        for q, r in zip(qs, responses[key]):
            p = lm.chat([{"role": "system", "content": sps[key]}, {"role": "user", "content": q},
                         {"role": "assistant", "content": r}], add_generation_prompt=False)
            a, b = p.span_of("assistant")
            enc = lm.tokenizer(p.text, add_special_tokens=False, return_offsets_mapping=True)
            idx = [i for i, (x, y) in enumerate(enc["offset_mapping"]) if x < b and y > a]
            h = lm.model(input_ids=torch.tensor([enc["input_ids"]]),
                         output_hidden_states=True).hidden_states[2][0]
            rows.append(h[idx].mean(0))
        torch.testing.assert_close(s[key].data, torch.stack(rows).mean(0), atol=1e-4, rtol=1e-4)
    gen = st.response_means(lm, qs[:1], sps, "resid_post.1", max_new_tokens=3)
    assert gen.data.shape == (2, lm.d_model) and torch.isfinite(gen.data).all()


def test_probe_direction_from_sklearn_and_tensors():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    y = (x[:, 0] + 0.1 * rng.normal(size=60) > 0).astype(int)
    clf = LogisticRegression().fit(x, y)
    v = st.probe_direction(clf, site="resid_post.3", model="m")
    ref = clf.coef_[0] / np.linalg.norm(clf.coef_[0])
    np.testing.assert_allclose(v.data.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert v.site == "resid_post.3" and v.method == "probe"
    y3 = rng.integers(0, 3, 60)
    s = st.probe_direction(LogisticRegression().fit(x, y3))
    assert isinstance(s, st.VectorSet) and s.names == ["0", "1", "2"]
    lin = torch.nn.Linear(8, 1)
    torch.testing.assert_close(st.probe_direction(lin, normalise=False).data, lin.weight[0].detach())
    with pytest.raises(ValueError, match="probe weights"):
        st.probe_direction(torch.zeros(2, 2, 2))


def test_project_out_pcs_against_numpy():
    g = torch.Generator().manual_seed(0)
    neutral = torch.randn(200, 16, generator=g) * torch.linspace(5, 0.1, 16)  # strong top PCs
    v = st.Vector(torch.randn(16, generator=g), site="resid_post.1")
    out = st.project_out_pcs(v, neutral, variance=0.5)
    X = neutral.double().numpy() - neutral.double().numpy().mean(0)
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    evr = s ** 2 / (s ** 2).sum()
    k = int((np.cumsum(evr) < 0.5).sum()) + 1
    assert out.meta["projected_out"] == k
    ref = v.data.double().numpy() - vt[:k].T @ (vt[:k] @ v.data.double().numpy())
    np.testing.assert_allclose(out.data.numpy(), ref / np.linalg.norm(ref), atol=1e-5)
    assert np.abs(vt[:k] @ out.data.double().numpy()).max() < 1e-5
    s2 = st.project_out_pcs(st.VectorSet(torch.randn(3, 16)), neutral, n_components=2)
    assert s2.meta["projected_out"] == 2 and torch.allclose(s2.norms(), torch.ones(3))


def test_covariance_directions_match_the_data_covariance():
    """Raw draws have the data's (1/N) covariance (numpy, 40k draws); unit rows are the raw rows
    normalised; the recipe equals a manual computation; a generator is advanced, an int is not."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 5, generator=g)
    X = torch.randn(300, 5, generator=g) @ A + 3.0  # (N, d) correlated, off-centre
    R = st.covariance_directions(X, 40000, seed=7, unit=False).double().numpy()
    cov = np.cov(X.double().numpy(), rowvar=False, bias=True)
    emp = R.T @ R / len(R)  # E[r r^T] (mean 0 by construction)
    assert np.abs(emp - cov).max() < 0.05 * np.abs(cov).max()
    U = st.covariance_directions(X, 40000, seed=7)
    assert U.dtype == torch.float32 and torch.allclose(U.norm(dim=1), torch.ones(40000), atol=1e-5)
    np.testing.assert_allclose(U.numpy(), R / np.linalg.norm(R, axis=1, keepdims=True), atol=1e-6)
    Xc = X.double().numpy() - X.double().numpy().mean(0)
    G = torch.randn(3, 300, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = G.numpy() @ Xc
    got = st.covariance_directions(X, 3, seed=1).numpy()
    np.testing.assert_allclose(got, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-6)
    gen = torch.Generator().manual_seed(1)
    a, b = st.covariance_directions(X, 3, gen), st.covariance_directions(X, 3, gen)
    assert torch.equal(a, torch.as_tensor(got)) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="N >= 2"):
        st.covariance_directions(X[0], 3)


def test_emotion_vectors_recipe(tiny):
    lm = tiny("llama")
    stories = {"joy": ["Alice met Bob in the garden. Yes!", "The quick brown fox"],
               "fear": ["Do you detect an injected thought?", "No No"],
               "calm": ["Tell me about the ocean", "music and bread"]}
    neutral = ["The quick brown fox jumps over the lazy dog.", "def add(a, b): return a + b",
               "numbers 0 1 2 3 4 5 6 7 8 9", "Tell me about the mountains"]
    s = st.emotion_vectors(lm, stories, "resid_post.2", neutral, variance=0.5)
    assert s.names == list(stories) and torch.allclose(s.norms(), torch.ones(3), atol=1e-5)
    assert s.meta["projected_out"] >= 1
