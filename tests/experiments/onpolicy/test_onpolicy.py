"""On-policy recognition: entropy / surprisal against manual math on HF logits, response masks,
probe R^2 on planted data, statistics against references, and the pipeline end to end."""
import json

import numpy as np
import pytest
import torch

from mindscope.core._vector import Vector
from mindscope.experiments import onpolicy
from mindscope.experiments.onpolicy.core import (Seq, TokenStats, auc, auc_ci, entropy_surprisal,
                                                 load_offpolicy_jsonl, make_seq, pad_left,
                                                 per_position, ratio_ci,
                                                 response_mask, shipped, token_stats,
                                                 wilson_bounds)
from mindscope.experiments.onpolicy.gap import build_conditions, derangement, entropy_gap
from mindscope.experiments.onpolicy.surprise import (steer_dose_response, surprise_probes,
                                                     token_identity_r2)

TINY_CFG = dict(n_prompts=4, max_new_tokens=8, n_boot=50, n_steer=2, steer_doses=(-2.0, 0.0, 2.0),
                intent_prompts=3, intent_samples=3, intent_tokens=6, n_topics=2,
                opening_tokens=3, continuation_tokens=3, batch_size=8)


@pytest.fixture(scope="module")
def lm(tiny):
    return tiny("llama")


def _seqs(lm):
    tok = lm.tokenizer
    a = make_seq(lm, "Tell me about the ocean.", tok("The ocean is deep.")["input_ids"], 0, "own")
    b = make_seq(lm, "Hi", tok("Yes No Ok. The quick brown fox")["input_ids"], 1, "human")
    return [a, b]


def test_entropy_surprisal_match_manual_hf_logits(lm):
    seqs = _seqs(lm)
    st = token_stats(lm, seqs, batch_size=2, progress=False)
    for s, H, S in zip(seqs, st.entropy, st.surprisal):
        ids = torch.tensor([s.ids])
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0].double()  # (T, V) unpadded reference
        p = torch.softmax(logits, -1)
        H_ref = -(p * torch.log(p)).sum(-1)  # (T,)
        S_ref = -torch.log(p[torch.arange(len(s.ids) - 1), ids[0, 1:]])  # (T-1,) token t+1
        assert len(H) == s.n_resp == len(s.ids) - s.start
        np.testing.assert_allclose(H, H_ref[s.start:].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(S, S_ref[s.start - 1:].numpy(), rtol=1e-4, atol=1e-4)


def test_entropy_surprisal_formula():
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    H, S = entropy_surprisal(logits, ids)
    p = torch.softmax(logits, -1)
    assert torch.allclose(H, -(p * p.log()).sum(-1), atol=1e-5)
    assert torch.isnan(S[:, 0]).all()
    assert torch.allclose(S[1, 3], -p[1, 2, ids[1, 3]].log(), atol=1e-5)
    uniform = torch.zeros(1, 2, 16)
    assert abs(float(entropy_surprisal(uniform, torch.zeros(1, 2, dtype=torch.long))[0][0, 0])
               - np.log(16)) < 1e-5


def test_response_mask_and_padding(lm):
    seqs = [Seq([5, 6, 7, 8, 9], 3, 0, "own"), Seq([5, 6, 7], 1, 1, "own")]
    m = response_mask(seqs)
    assert m.int().tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]]
    b = pad_left(lm, [s.ids for s in seqs])
    assert b.input_ids[1].tolist()[2:] == [5, 6, 7] and b.attention_mask[1].tolist() == [0, 0, 1, 1, 1]
    # make_seq: the prompt part is exactly the chat-rendered prompt with the generation prompt
    s = make_seq(lm, "Hi there", [11, 12, 13], 0, "own")
    text = lm.chat([{"role": "user", "content": "Hi there"}]).text
    assert s.ids[:s.start] == lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert s.ids[s.start:] == [11, 12, 13] and s.n_resp == 3
    with pytest.raises(ValueError, match="empty"):
        make_seq(lm, "Hi", [], 0, "own")


def test_activations_at_response_positions_match_hf(lm):
    seqs = _seqs(lm)
    st = token_stats(lm, seqs, sites=["resid_post.1"], batch_size=2, progress=False)
    for s, acts in zip(seqs, st.acts["resid_post.1"]):
        with torch.no_grad():
            hs = lm.model(input_ids=torch.tensor([s.ids]), output_hidden_states=True).hidden_states
        assert acts.shape == (s.n_resp, lm.d_model)
        torch.testing.assert_close(acts, hs[2][0, s.start:].float(), rtol=1e-4, atol=1e-4)


def test_stats_against_references():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    p, q = rng.normal(1, 1, 30), rng.normal(0, 1, 25)
    q[:3] = p[:3]  # ties
    assert abs(auc(p, q) - roc_auc_score(np.r_[np.ones(30), np.zeros(25)], np.r_[p, q])) < 1e-12
    r = ratio_ci(np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0]), n_boot=100)
    assert r["ratio"] == pytest.approx(2.0) and r["ci"] == pytest.approx([2.0, 2.0])
    lo, hi = wilson_bounds(8, 10)  # reference values of the Wilson score interval
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    a = auc_ci(np.arange(10.0) + 100, np.arange(10.0), n_boot=50)
    assert a["auc"] == 1.0 and a["ci"] == [1.0, 1.0]
    assert per_position([np.array([1.0, 2.0]), np.array([3.0])], 3)[:2].tolist() == [2.0, 2.0]
    for n in (2, 3, 7):
        d = derangement(n, seed=n)
        assert sorted(d.tolist()) == list(range(n)) and not np.any(d == np.arange(n))


def test_probe_r2_on_planted_data():
    rng = np.random.default_rng(0)
    d, seqs, ent, sur, ids, signal, noise = 16, [], [], [], [], [], []
    w = rng.normal(size=d)
    for i in range(40):
        n = 12
        X = rng.normal(size=(n, d))
        seqs.append(Seq(list(range(3 + n)), 3, i, "own"))
        sur.append(X @ w + 0.1 * rng.normal(size=n))
        ent.append(np.ones(n))
        ids.append(rng.integers(0, 50, n))
        signal.append(torch.tensor(X, dtype=torch.float32))
        noise.append(torch.randn(n, d))
    st = TokenStats(ent, sur, {"resid_post.0": noise, "resid_post.1": signal}, ids)
    res, sw = surprise_probes(seqs, st, C=1.0)
    r2 = dict(zip(res["sites"], res["r2_test"]))
    assert r2["resid_post.1"] > 0.95 and r2["resid_post.0"] < 0.2
    assert res["best_site"] == "resid_post.1" and res["r2_token_identity"] < 0.3
    w_hat = sw.evals["resid_post.1"].probe.weight[0].numpy()
    assert np.corrcoef(w_hat, w)[0, 1] > 0.99
    # token-identity baseline: y fully determined by token id -> R^2 ~ 1
    tid = rng.integers(0, 5, 400)
    y = np.array([0.0, 1.0, 2.0, 5.0, 9.0])[tid]
    test = np.arange(400) % 4 == 0
    assert token_identity_r2(tid, y, test) == pytest.approx(1.0)


def test_entropy_gap_bookkeeping(lm):
    prompts = ["Tell me about the ocean.", "Hi", "Tell me about music."]
    own = [lm.tokenizer("The ocean is deep")["input_ids"], [],
           lm.tokenizer("Music is nice and good")["input_ids"]]
    human = ["Waves and salt water everywhere, for miles", "Hello", "Songs."]
    seqs = build_conditions(lm, prompts, own, human, None, shuffled=True, seed=0)
    assert [s.prompt_idx for s in seqs if s.condition == "own"] == [0, 2]  # empty own skipped
    for s in seqs:  # off-policy responses cut to the own length of their prompt
        assert s.n_resp <= len(own[s.prompt_idx])
    sh = [s for s in seqs if s.condition == "shuffled"]
    assert sh[0].ids[sh[0].start:] == own[2][:len(own[0])]  # the other prompt's own answer
    st = token_stats(lm, seqs, progress=False)
    g = entropy_gap(seqs, st, n_boot=20)
    H = {(s.condition, s.prompt_idx): float(e.mean()) for s, e in zip(seqs, st.entropy)}
    want = (H["human", 0] + H["human", 2]) / (H["own", 0] + H["own", 2])
    assert g["ratios"]["human"]["ratio"] == pytest.approx(want)
    assert g["n_prompts"] == 2 and len(g["per_position"]["own"]) == max(s.n_resp for s in seqs)


def test_steering_matches_manual_add(lm):
    s = _seqs(lm)[:1]
    v = torch.randn(lm.d_model)
    vec = Vector(v / v.norm(), site="resid_post.1", model=lm.name,
                 meta={"weight_norm": 0.5})
    out = steer_dose_response(lm, vec, s, doses=(-3.0, 3.0), n_boot=20)
    assert out["doses"] == [-3.0, 0.0, 3.0]
    base = token_stats(lm, s, progress=False).entropy[0].mean()
    assert out["base_entropy"] == pytest.approx(base, abs=1e-5)
    m = response_mask(s)
    import mindscope as ms
    with lm.intervene(ms.Add("resid_post.1", vec.data, scale=3.0 / 0.5, positions=m)):
        manual = token_stats(lm, s, progress=False).entropy[0].mean()
    assert out["probe"]["delta_entropy"][2]["mean"] == pytest.approx(manual - base, abs=1e-5)
    assert out["probe"]["delta_entropy"][1]["mean"] == 0.0
    assert abs(out["probe"]["delta_entropy"][2]["mean"]) > 1e-6  # the edit changed something


def test_config_validation():
    with pytest.raises(ValueError, match="protocol"):
        onpolicy.Config(protocols=("gapp",))
    with pytest.raises(ValueError, match="other_model"):
        onpolicy.Config(offpolicy=("other",))
    with pytest.raises(ValueError, match="n_prompts"):
        onpolicy.Config(n_prompts=1)
    assert "other" in onpolicy.Config(offpolicy_jsonl="x.jsonl").offpolicy
    assert onpolicy.Config(protocols="gap").protocols == ("gap",)
    assert onpolicy.Config.quick().n_prompts < onpolicy.Config().n_prompts


def test_data_files(tmp_path):
    rows = shipped("prompts")
    assert len(rows) == 24 and all(r["human"].strip() for r in rows)
    assert len({r["prompt"] for r in rows}) == 24 and len(shipped("open_prompts")) == 12
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1 lacks"):
        load_offpolicy_jsonl(bad)
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_offpolicy_jsonl(bad)
    with pytest.raises(FileNotFoundError):
        load_offpolicy_jsonl(tmp_path / "missing.jsonl")


def test_pipeline_end_to_end(lm, tmp_path):
    other = tmp_path / "other.jsonl"
    rows = shipped("prompts")[:4]
    other.write_text("".join(json.dumps({"prompt": r["prompt"], "response": "Ok. " * 5}) + "\n"
                             for r in rows))
    cfg = onpolicy.Config(**TINY_CFG, offpolicy_jsonl=str(other))
    res = onpolicy.run(lm, cfg, tmp_path / "run")
    out = tmp_path / "run"
    for f in ("run_config.json", "results.json", "report.html", "entropy.png", "probe_r2.png",
              "steering.png", "surprise_vector.safetensors", "surprise_vector.json"):
        assert (out / f).is_file(), f
    r = json.loads((out / "results.json").read_text())
    assert set(r["gap"]["ratios"]) == {"human", "shuffled", "other"}
    c = r["gap"]["conditions"]
    assert r["gap"]["ratios"]["human"]["ratio"] == pytest.approx(c["human"]["mean"] / c["own"]["mean"])
    assert len(r["surprise"]["r2_test"]) == lm.n_layers
    assert r["intent"]["k"] >= 2 and "verbal" in r and r["verbal"]["by_condition"]["human"]["n"] == 8
    v = Vector.load(out / "surprise_vector.safetensors")
    assert v.site == r["surprise"]["steering"]["site"] and abs(float(v.norm) - 1) < 1e-5
    assert "off/on entropy ratio" in (out / "report.html").read_text()
    assert json.loads((out / "run_config.json").read_text())["model"]["n_layers"] == lm.n_layers
    assert res.vector is not None


def test_run_entropy_gap_only(lm, tmp_path):
    res = onpolicy.run_entropy_gap(lm, onpolicy.Config(**{**TINY_CFG, "n_boot": 20}), tmp_path)
    assert set(res.results) >= {"gap", "model"} and "surprise" not in res.results
    assert res.results["gap"]["ratios"]["human"]["ratio"] > 0
    # a second model for the base-vs-post-trained comparison
    res2 = onpolicy.run(lm, onpolicy.Config(**{**TINY_CFG, "protocols": ("gap",), "n_boot": 20}),
                        tmp_path / "cmp", compare_lm=lm)
    assert lm.name in res2.results["compare"]


def test_cli_gap(lm, tmp_path):
    from typer.testing import CliRunner

    from mindscope.cli import app  # `onpolicy gap` (the old spelling, a hidden alias)

    d = tmp_path / "tiny-llama"
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    r = CliRunner().invoke(app, ["onpolicy", "gap", "--model", str(d), "--quick", "--n-prompts", "3",
                                 "--max-new-tokens", "6", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "off/on entropy ratio" in r.output
    assert (tmp_path / "o" / "results.json").is_file()
    r = CliRunner().invoke(app, ["onpolicy", "--protocols", "gap", "--model", str(tmp_path / "nope"), "--quick"])
    assert r.exit_code != 0


# ---- issue 23: confound 2 (surprise) and 3 (cached intention) ---------------------------------

def test_surprise_split_has_no_token_sequence_on_both_sides(lm):
    """Shuffled sequences carry another prompt's response: probe groups follow the source of
    the tokens, so no response token sequence lands in both the train and the test rows."""
    from mindscope.experiments.onpolicy.surprise import probe_data
    from mindscope.probes import group_split

    tok = lm.tokenizer
    prompts = [f"Tell me about topic {i}." for i in range(8)]
    own = [tok(f"Answer number {i} is here and long")["input_ids"] for i in range(8)]
    seqs = build_conditions(lm, prompts, own, None, None, shuffled=True, seed=3)
    assert any(s.condition == "shuffled" and s.source != s.prompt_idx for s in seqs)
    n = [s.n_resp for s in seqs]
    st = TokenStats([np.ones(k) for k in n], [np.arange(k, dtype=float) + 1 for k in n],
                    {"resid_post.0": [torch.zeros(k, 4) for k in n]},
                    [np.array(s.ids[s.start:]) for s in seqs], [np.ones(k) for k in n])
    _, _, groups, _, _ = probe_data(seqs, st, with_prev=True)
    row_seq = np.concatenate([np.full(k, i) for i, k in enumerate(n)])
    for seed in range(5):
        test = group_split(groups, 0.25, seed, n=len(groups))
        sides: dict = {}
        for i, s in enumerate(seqs):
            key = tuple(s.ids[s.start:])
            sides.setdefault(key, set()).update(test[row_seq == i].tolist())
        assert all(len(v) == 1 for v in sides.values()), "a token sequence on both sides"


def test_beyond_entropy_partial_r2():
    from mindscope.experiments.onpolicy.surprise import beyond_entropy

    rng = np.random.default_rng(0)
    H = rng.uniform(0, 5, 2000)
    extra = rng.normal(size=2000)
    y = H + 0.1 * rng.normal(size=2000)
    test = np.arange(2000) % 4 == 0
    only_h = beyond_entropy(H + 0.01 * rng.normal(size=2000), H, y, test)
    assert only_h["r2_prev_entropy"] > 0.95 and abs(only_h["partial_r2"]) < 0.05
    y2 = H + extra
    more = beyond_entropy(H + extra, H, y2, test)  # the probe knows what entropy does not
    assert more["partial_r2"] > 0.9 and more["r2_prev_entropy"] < 0.8


def test_variance_matched_random_and_orthogonal_direction():
    from mindscope.experiments.onpolicy.surprise import covariance_directions, orthogonal_to

    g = torch.Generator().manual_seed(0)
    X = torch.randn(4000, 6, generator=g) * torch.tensor([10.0, 1, 1, 1, 1, 1])
    R = covariance_directions(X, 200, seed=1)
    assert torch.allclose(R.norm(dim=1), torch.ones(200), atol=1e-5)
    assert float((R[:, 0] ** 2).mean()) > 0.8  # isotropic would give 1/6
    w, h = torch.randn(6, generator=g), torch.randn(6, generator=g)
    wp = orthogonal_to(w, h)
    assert abs(float(wp @ h)) < 1e-5 and float(wp @ w) > 0


def test_topics_come_from_text_embeddings():
    from mindscope.experiments.onpolicy.intent import topic_labels

    texts = ["The ocean waves crash on the sandy beach.", "Sharks and whales swim in the sea.",
             "Coral reefs live under the ocean water.", "I baked bread with flour and butter.",
             "The cake recipe needs sugar, eggs and flour.", "Fresh cookies come out of the oven."]
    lab = topic_labels(None, texts, [], 2, "minilm", "", 0, 8)  # no model needed: text only
    assert len(set(lab[:3])) == 1 and len(set(lab[3:])) == 1 and lab[0] != lab[3]
    assert onpolicy.Config().topic_method == "minilm"
