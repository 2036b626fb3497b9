"""Emotion concepts: the vector recipe against HF hidden states + numpy, Elo against a hand
computation, statistics against scipy, per-row batched steering against single-row calls, and
the pipeline end to end on a tiny model."""
import json
import math

import numpy as np
import pytest
import torch

import mindscope as ms
from mindscope import steering as st
from mindscope.experiments import emotions
from mindscope.experiments.emotions.data import (load_story_jsonl, load_table, load_tasks,
                                                  shipped_stories)
from mindscope.experiments.emotions.prefs import (ELO_PER_LOGIT, choice_logits, elo,
                                                   pref_prompts, span_mask)
from mindscope.experiments.emotions.vectors import (classify_heldout, geometry, neutral_acts,
                                                     pearson, spearman, story_means,
                                                     vectors_from_means)

STORIES = {"happy": ["The quick brown fox jumps.", "Alice met Bob in the garden."],
           "sad": ["Tell me about the ocean.", "The lazy dog sat alone."],
           "afraid": ["Trial 1: Do you detect it?", "def add(a, b): return a"]}
NEUTRAL = ["The quick brown fox jumps over the lazy dog.", "numbers 0 1 2 3 4 5 6 7 8 9",
           "Tell me about the mountains, music, and bread.", "Yes No Ok."]


@pytest.fixture(scope="module")
def lm(tiny):
    return tiny("llama")


def _hf_tokens(lm, text, layer):
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    return hs[layer + 1][0].double()  # (T, d)


def test_vector_recipe_matches_manual_hf_and_library(lm):
    site, L = "resid_post.2", 2
    # manual: HF hidden states, first token skipped, numpy PCA of neutral tokens
    means = np.stack([np.mean([_hf_tokens(lm, t, L)[1:].mean(0).numpy() for t in ts], 0)
                      for ts in STORIES.values()])
    means = means - means.mean(0)
    neu = np.concatenate([_hf_tokens(lm, t, L)[1:].numpy() for t in NEUTRAL])
    c = neu - neu.mean(0)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    ratio = np.cumsum(s ** 2) / (s ** 2).sum()
    k = int((ratio < 0.5).sum()) + 1
    q = vt[:k]
    ref = means - means @ q.T @ q
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)

    X, labels, names = story_means(lm, STORIES, site)
    vs = vectors_from_means(X, labels, names, neutral_acts(lm, NEUTRAL, site), 0.5, site)
    assert vs.names == list(STORIES) and vs.meta["projected_out"] == k
    np.testing.assert_allclose(vs.data.numpy(), ref, atol=2e-4)
    lib = st.emotion_vectors(lm, STORIES, site, NEUTRAL)
    np.testing.assert_allclose(vs.data.numpy(), lib.data.numpy(), atol=1e-5)


def test_elo_hand_computed():
    r = elo([("x", "y", 1.0), ("y", "z", 1.0)], k=32, init=1000, passes=1, shuffle=False)
    # match 1: E = 0.5 -> x 1016, y 984. match 2: E_y = 1/(1+10^(16/400)) = 0.4769906
    assert r["x"] == pytest.approx(1016.0)
    assert r["y"] == pytest.approx(984 + 32 * (1 - 0.4769906), abs=1e-4)
    assert r["z"] == pytest.approx(1000 - 32 * (1 - 0.4769906), abs=1e-4)
    assert sum(r.values()) == pytest.approx(3000.0)  # Elo is zero-sum
    # soft outcomes: a draw between equals changes nothing
    assert elo([("a", "b", 0.5)], passes=3)["a"] == pytest.approx(1000.0)
    # a logit difference d is an Elo gap of d * 400/ln10: expected score = sigmoid(d)
    d = 0.7
    assert 1 / (1 + 10 ** (-d * ELO_PER_LOGIT / 400)) == pytest.approx(1 / (1 + math.exp(-d)))


def test_statistics_match_scipy():
    from scipy import stats
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    y[3] = y[4]  # a tie
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    assert spearman([1, 2, 3, 4], [1, 3, 9, 27]) == pytest.approx(1.0)


def test_span_mask_covers_option_text(lm):
    prompts, spans = pref_prompts(lm, [("solve a puzzle", "write a poem")])
    for side, text in ((0, "solve a puzzle"), (1, "write a poem")):
        m = span_mask(lm, prompts, [spans[0][side]])
        ids = lm.tokenize(prompts).input_ids[0]
        got = lm.tokenizer.decode(ids[m[0, :len(ids)]])
        assert text in got and len(got) <= len(text) + 4


def test_per_row_batched_steering_equals_single_rows(lm):
    site = "resid_post.1"
    prompts, spans = pref_prompts(lm, [("read a book", "clean a room"), ("walk", "swim a lap")])
    torch.manual_seed(0)
    V = torch.randn(2, lm.d_model)
    S = torch.tensor([2.0, -1.0])
    M = span_mask(lm, prompts, [spans[0][0], spans[1][1]])
    batched = choice_logits(lm, prompts, site, V, S, M, batch_size=2)
    for i in range(2):
        one = choice_logits(lm, [prompts[i]], site, V[i:i + 1], S[i:i + 1], M[i:i + 1, :])
        assert one[0] == pytest.approx(batched[i], abs=1e-4)
    plain = choice_logits(lm, prompts)
    assert not np.allclose(plain, batched, atol=1e-4)  # the steering changed something
    # manual reference for row 0: HF forward with the edit applied by a hook
    ids = lm.tokenize([prompts[0]]).input_ids
    mask0 = M[0, :ids.shape[1]]

    def hook(mod, inp, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[0, mask0] += S[0] * V[0]
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
    hd = lm.block(1).register_forward_hook(hook)
    try:
        with torch.no_grad():
            lg = lm.model(input_ids=ids).logits[0, -1]
    finally:
        hd.remove()
    from mindscope.experiments.emotions.prefs import letter_ids
    a, b = letter_ids(lm)
    assert float(lg[a] - lg[b]) == pytest.approx(batched[0], abs=1e-4)


def test_classification_and_geometry_on_planted_data():
    rng = np.random.default_rng(0)
    k, d, per = 6, 32, 4
    centres = rng.normal(size=(k, d)) * 3
    X = torch.tensor(np.concatenate([centres[i] + rng.normal(size=(per, d)) * 0.3
                                     for i in range(k)]), dtype=torch.float32)
    labels = np.repeat(np.arange(k), per)
    neutral = torch.tensor(rng.normal(size=(200, d)) * np.r_[10.0, np.ones(d - 1)], dtype=torch.float32)
    out = classify_heldout(X, labels, [str(i) for i in range(k)], neutral)
    assert out["n_folds"] == per and out["accuracy"]["n"] == k * per
    assert out["accuracy"]["rate"] > 0.9 and out["chance"] == pytest.approx(1 / k)
    # geometry: a set whose first principal direction carries valence
    val = np.linspace(-1, 1, 10)
    aro = np.tile([0.5, -0.5], 5)
    data = np.outer(val, np.eye(8)[0]) * 5 + np.outer(aro, np.eye(8)[1]) + rng.normal(size=(10, 8)) * 0.01
    g = geometry(ms.VectorSet(torch.tensor(data, dtype=torch.float32)), val, aro)
    assert g["pc1_valence"]["r"] > 0.99 and g["pc2_arousal"]["r"] > 0.95
    assert g["best_valence_pc"] == 1


def test_shipped_data_is_complete():
    t = load_table()
    names = [e["name"] for e in t["emotions"]]
    assert len(names) >= 30 and len(set(names)) == len(names)
    vals = np.array([[e["valence"], e["arousal"]] for e in t["emotions"]])
    assert np.abs(vals).max() <= 1 and vals[:, 0].min() < -0.5 < 0.5 < vals[:, 0].max()
    s = shipped_stories()
    assert set(s) == set(names) and all(len(v) >= 3 for v in s.values())
    assert all(e not in x.lower() for e, xs in s.items() for x in xs)
    tasks = load_tasks()
    assert len(tasks["activities"]) >= 20 and len(tasks["choices"]) >= 10
    assert all(sc["emotion"] in names for sc in tasks["intensity"])
    assert "approximate" in t["source"].lower()


def test_story_jsonl(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"emotion": "Happy", "text": "A"}\n\n{"emotion": "sad", "text": "B"}\n'
                 '{"emotion": "happy", "text": "C"}\n')
    assert load_story_jsonl(p) == {"happy": ["A", "C"], "sad": ["B"]}
    with pytest.raises(ValueError, match="no stories for"):
        load_story_jsonl(p, ["happy", "afraid"])
    p.write_text('{"emotion": "happy"}\n')
    with pytest.raises(ValueError, match="s.jsonl:1"):
        load_story_jsonl(p)
    with pytest.raises(FileNotFoundError):
        load_story_jsonl(tmp_path / "nope.jsonl")


def test_config_validation():
    with pytest.raises(ValueError, match="unknown part"):
        emotions.Config(parts=("nope",))
    with pytest.raises(ValueError, match="at least 3"):
        emotions.Config(emotions=("happy", "sad"))
    with pytest.raises(ValueError, match="story_source"):
        emotions.Config(story_source="robots")


def test_pipeline_end_to_end(lm, tmp_path):
    cfg = emotions.Config.quick(emotions=("happy", "sad", "afraid", "calm"), n_activities=3,
                                n_pairs=1, steer_emotions=("happy", "afraid"), batch_size=32)
    res = emotions.run(lm, cfg, tmp_path)
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["site"] == "resid_post.3" and r["n_emotions"] == 4 and r["n_stories"] == 12
    assert set(r["preferences"]["steering"]) == {"happy", "afraid"}
    assert r["preferences"]["steering"]["happy"]["n"] == 4  # 1 pair x 2 orders x 2 sides
    assert set(r["misaligned"]["rates"]) == {"none", "happy", "afraid"}
    assert len(r["tracking"]["tokens"]) == len(r["tracking"]["projections"])
    tt = r["tracking_test"]
    for ctx in ("story", "dialogue"):  # 2 passages per emotion per context, 4 emotions
        assert tt[ctx]["n_passages"] == 8 and tt[ctx]["n_emotions"] == 4
        assert 0 <= tt[ctx]["macro_auc"] <= 1 and tt[ctx]["auc_ci"][0] <= tt[ctx]["auc_ci"][1]
    assert "author ratings" in r["ratings_are"]
    for f in ("report.html", "run_config.json", "geometry.png", "tracking.png",
              "preferences.png", "misaligned.png", "emotion_vectors.safetensors"):
        assert (tmp_path / f).is_file(), f
    v = ms.VectorSet.load(tmp_path / "emotion_vectors.safetensors")
    assert torch.allclose(v.norms(), torch.ones(4), atol=1e-5)
    assert torch.allclose(v.data, res.vectors.data)
    assert "emotion concepts" in (tmp_path / "report.html").read_text()


def test_cli_rejects_bad_parts():
    from typer.testing import CliRunner

    from mindscope.cli import app
    r = CliRunner().invoke(app, ["emotions", "--parts", "nope"])
    assert r.exit_code == 2 and "unknown part" in r.output
    r = CliRunner().invoke(app, ["emotions", "run", "--part", "nope"])  # old spelling (alias)
    assert r.exit_code == 2 and "unknown part" in r.output


# ---- issue 23: quantitative tracking on held-out passages, cross-context ---------------------

def test_auc_matches_sklearn_and_score_context():
    from sklearn.metrics import roc_auc_score

    from mindscope.experiments.emotions.tracking import score_context
    from mindscope.runs import auc

    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 30), rng.normal(0, 1, 40)
    ref = roc_auc_score(np.r_[np.ones(30), np.zeros(40)], np.r_[a, b])
    assert auc(a, b) == pytest.approx(ref)
    labels = np.repeat(np.arange(4), 5)
    P = rng.normal(size=(20, 4)) * 0.1
    P[np.arange(20), labels] += 1.0  # each passage projects most on its own emotion
    s = score_context(P, labels, ["a", "b", "c", "d"], n_boot=200)
    assert s["macro_auc"] == 1.0 and s["top1"]["rate"] == 1.0 and s["chance"] == 0.25
    s0 = score_context(rng.normal(size=(20, 4)), labels, ["a", "b", "c", "d"], n_boot=200)
    assert s0["auc_ci"][0] < 0.5 < s0["auc_ci"][1] + 0.2


def test_passages_are_heldout_and_unnamed():
    from mindscope.experiments.emotions.tracking import load_passages

    ps = load_passages()
    names = {e["name"] for e in load_table()["emotions"]}
    stories = {t for v in shipped_stories().values() for t in v}
    assert {p["context"] for p in ps} == {"story", "dialogue"}
    for p in ps:
        assert p["emotion"] in names and p["text"] not in stories
        assert p["emotion"] not in p["text"].lower(), p  # the operative emotion is never named
