"""Emotions positive control: the planted feature is recovered by the unchanged extraction, the
untouched model is not flagged, the fitted gate is reused, and the recovery statistic matches a
direct computation on planted data."""
import json

import numpy as np
import pytest
import torch

from mindscope.experiments import emotions, run_control
from mindscope.experiments.emotions import control as C


@pytest.fixture(scope="module")
def lm(tiny):
    return tiny("llama", seed=3)  # measured: untouched cosine 0.03, interval [-0.24, 0.31]


STORIES = {"happy": ["She laughed and danced in the sun.", "He grinned at the good news."],
           "sad": ["He sat alone and cried by the window.", "The letter made her weep."],
           "afraid": ["zzz zzz zzz zzz zzz zzz", "zzz zzz zzz zzz zzz"],
           "calm": ["The lake was still and the air was quiet.", "She breathed slowly."],
           "angry": ["He slammed the door and shouted.", "She threw the cup at the wall."],
           "bored": ["The clock ticked through the long afternoon.", "Nothing happened again."]}
TEXTS = {"target": "afraid", "target_texts": ["zzz zzz zzz zzz zzz zzz zzz"],
         "other_texts": ["The quick brown fox jumps over the lazy dog.", "Tell me about bread.",
                         "numbers 0 1 2 3 4 5", "They walked to the market in the rain."]}


@pytest.fixture
def planted_setup(tmp_path, monkeypatch):
    """The tiny model cannot tell fear from calm, so the target emotion's stories (and the gate's
    training text) are a token no other text has: the gate then fires on them alone."""
    p = tmp_path / "stories.jsonl"
    p.write_text("".join(json.dumps({"emotion": e, "text": t}) + "\n"
                         for e, ts in STORIES.items() for t in ts))
    real = C.shipped_json
    monkeypatch.setattr(C, "shipped_json", lambda folder, name: TEXTS if name ==
                        "control_texts.json" else real(folder, name))
    return emotions.Config.quick(emotions=tuple(STORIES), site="resid_post.2",
                                 story_source=str(p))


def _cfg(**over):
    return emotions.Config.quick(emotions=("happy", "sad", "afraid", "calm", "angry", "bored"),
                                 site="resid_post.2", **over)


def test_control_recovers_the_planted_direction_and_not_on_the_untouched(lm, planted_setup,
                                                                        tmp_path):
    res = run_control("emotions", lm, planted_setup, tmp_path / "c", strengths=[16.0, 64.0],
                      seeds=[0])
    r = res.results
    u, p = r["untouched"][0], r["planted"]["64"][0]
    assert not u["detected"] and u["lo"] < 0 < u["hi"]
    assert p["detected"] and p["value"] > 0.5  # measured 0.64 [0.39, 0.88]
    assert r["planted"]["16"][0]["detected"]
    assert res.passed
    assert r["effects"]["64"]["target"] == "afraid"
    assert "stories.json" in r["effects"]["64"]["held_out"]
    # the extraction ran the cheap parts only
    run = json.loads((tmp_path / "c" / "untouched" / "seed0" / "results.json").read_text())
    assert "classify" in run and "preferences" not in run
    again = C.detect_recovery({**run, "run_dir": str(tmp_path / "c" / "untouched" / "seed0")})
    assert again.value == pytest.approx(u["value"])


def test_plant_reuses_its_fitted_gate(lm, tmp_path, monkeypatch):
    cfg = C.configure_extraction(_cfg())
    calls = []
    real = C._fit_gate
    monkeypatch.setattr(C, "_fit_gate", lambda *a: calls.append(1) or real(*a))
    p1 = C.plant_feature(lm, cfg, tmp_path / "m", 1.0)
    p1.close()
    p2 = C.plant_feature(lm, cfg, tmp_path / "m", 2.0)
    p2.close()
    assert len(calls) == 1 and (tmp_path / "m" / "feature.safetensors").exists()
    assert p2.effect["scale"] == pytest.approx(2 * p1.effect["scale"])
    assert p1.effect["gate"] == p2.effect["gate"]


def test_gated_write_matches_the_formula():
    g = torch.tensor([1.0, 0.0, 0.0])
    d = torch.tensor([0.0, 0.0, 1.0])
    iv = C.GatedWrite("resid_post.0", gate=g, tau=1.0, temp=0.5, direction=d, scale=3.0)
    h = torch.tensor([[2.0, 5.0, 0.0], [0.0, 1.0, 1.0]])
    out = iv.apply_rows(h, torch.tensor([0, 0]))
    a = torch.sigmoid(torch.tensor([(2 - 1) / 0.5, (0 - 1) / 0.5]))
    assert torch.allclose(out, h + 3.0 * a[:, None] * d)


def test_recovery_stats_on_planted_data():
    """Story means with d added to one emotion's stories: the recovered cosine equals the
    recipe computed by hand, and is near 1 when the plant dominates, near 0 without it."""
    rng = np.random.default_rng(0)
    D, k, per = 32, 5, 4
    X = torch.tensor(rng.normal(size=(k * per, D)), dtype=torch.float32)
    labels = np.repeat(np.arange(k), per)
    neutral = torch.tensor(rng.normal(size=(60, D)), dtype=torch.float32)
    names = ["a", "b", "afraid", "c", "e"]
    d = C.planted_direction(D)
    s0 = C.recovery_stats(X, labels, names, neutral, 0.5, "afraid", d, n_boot=200, n_null=500)
    assert s0["lo"] < 0 < s0["hi"]
    from mindscope.steering import neutral_pcs

    Xp = X.clone()
    Xp[torch.as_tensor(labels == 2)] += 50 * d
    s1 = C.recovery_stats(Xp, labels, names, neutral, 0.5, "afraid", d, n_boot=200, n_null=500)
    q = neutral_pcs(neutral, None, 0.5)
    M = torch.stack([Xp[torch.as_tensor(labels == i)].mean(0) for i in range(k)])
    M = M - M.mean(0)
    M = M - (M @ q.T) @ q
    assert s1["cos"] == pytest.approx(float(M[2] / M[2].norm() @ d), abs=1e-5)
    assert s1["cos"] > 0.8 and s1["lo"] > 0
    assert 0 < s1["boot_hi"] - s1["boot_lo"] < 0.2 and s1["boot_lo"] > 0.8


def test_causal_half_steering_along_the_extracted_vector(lm, planted_setup, tmp_path,
                                                         monkeypatch):
    """The planted reader turns d into output: steering the planted model along its extracted
    'afraid' vector raises the lexicon's log-prob (interval excludes 0, above the untouched
    model's effect, paired); variance-matched random directions of the same norm do not."""
    from mindscope.experiments.emotions import steer_control as S

    spec = {"target": "afraid", "lexicon": ["zzz"], "train_prompts": ["Once upon a", "I saw"],
            "prompts": ["The quick brown fox", "Tell me about", "numbers 0 1 2", "They walked",
                        "She opened the door", "It was a long day", "We went home and",
                        "The rain fell on"]}
    real = S.shipped_json
    monkeypatch.setattr(S, "shipped_json", lambda f, n: spec if n == "control_steer.json"
                        else real(f, n))
    monkeypatch.setattr(C, "shipped_json", lambda f, n: spec if n == "control_steer.json"
                        else TEXTS if n == "control_texts.json" else real(f, n))
    monkeypatch.setattr(C, "READ_FRACTION", 8.0)  # the tiny model's logits need a loud reader
    cfg = planted_setup.__class__(**{**planted_setup.__dict__, "strength": 4.0})
    res = S.causal_control(lm, cfg, tmp_path / "c", seeds=[0], strengths=[16.0, 64.0],
                           n_random=4, max_new_tokens=2)
    p, u = res["planted"]["64"][0], res["untouched"][0]
    assert res["full"] == "64" and res["extraction"]["64"]["detected"]
    assert res["cos_vectors_d"]["64"] > 0.5
    assert p["vector"]["detected"] and p["vector"]["value"] > 0.1, p["vector"]
    # random directions of the same norm do not raise the lexicon (measured: they lower it)
    assert not (p["random_pooled"]["detected"] and p["random_pooled"]["value"] > 0)
    assert p["minus_random"]["detected"] and p["minus_random"]["value"] > 0
    assert p["minus_untouched"]["detected"] and res["passed"] and res["passed_strict"], res
    md = (tmp_path / "c" / "steering.md").read_text()
    assert (tmp_path / "c" / "steering.png").exists() and "Strict test (planted" in md
    assert S.verdicts(res) == (True, True)
    # the reader reads d downstream of the extraction site, off on its calibration prompts
    eff = res["effect"]["64"]["reader"]
    assert u["n_prompts"] == 8 and eff["r_site"] == "resid_post.3"
    assert eff["r_tau"] == pytest.approx(eff["r_proj_train_max"] + C.READ_MARGIN * eff["r_temp"])
    g = res["diagnostics"]["64"]
    assert g["gate_last_steered"] > 0.5 > g["gate_last_unsteered"]
    # steering along the vector turns the reader on: it adds more steered than unsteered
    assert g["reader_steered"]["value"] > g["reader_unsteered"]["value"]
    assert len(u["unsteered"]) == 8
    # a second call reuses every saved row (no steering is recomputed)
    monkeypatch.setattr(S, "steer_check", lambda *a, **k: pytest.fail("recomputed"))
    again = S.causal_control(lm, cfg, tmp_path / "c", seeds=[0], strengths=[16.0, 64.0],
                             n_random=4, max_new_tokens=2)
    assert again["planted"]["64"][0]["vector"] == p["vector"]
    from mindscope.core import BadInputError
    with pytest.raises(BadInputError, match="strengths > 0"):
        S.causal_control(lm, cfg, tmp_path / "c", seeds=[0], strengths=[0.0])


def test_paired_effect_and_reader_direction(lm):
    from mindscope.experiments.emotions import steer_control as S

    e = S.paired_effect([1.0, 2.0, 3.0, 2.0], n_boot=500)
    assert e["value"] == pytest.approx(2.0) and 1.0 <= e["lo"] <= 2.0 <= e["hi"] <= 3.0
    assert e["detected"] and not S.paired_effect([1.0, -1.0, 0.5, -0.5])["detected"]
    ids = C.lexicon_ids(lm, ["zzz"])
    before = [p.requires_grad for p in lm.model.parameters()]
    u, losses = C.train_reader_direction(lm, "resid_post.3", 1.0, ["The rain fell on", "We"],
                                         ids, steps=10)
    assert u.shape == (lm.d_model,) and float(u.norm()) == pytest.approx(1.0, abs=1e-5)
    assert losses[-1] < losses[0]  # the trained write raises the lexicon's log-prob
    assert [p.requires_grad for p in lm.model.parameters()] == before  # the model as it was


def test_reader_leaves_the_extraction_site_unchanged(lm, tmp_path, monkeypatch):
    """The extraction half plants without the reader: the activations it reads (the extraction
    site) are the same with the reader on, and only downstream sites differ."""
    from mindscope.steering import row_means

    steer = {"target": "afraid", "lexicon": ["zzz"], "train_prompts": ["Once upon a", "I saw"],
             "prompts": ["x"]}
    real = C.shipped_json
    monkeypatch.setattr(C, "shipped_json", lambda f, n: steer if n == "control_steer.json"
                        else TEXTS if n == "control_texts.json" else real(f, n))
    monkeypatch.setattr(C, "READ_FRACTION", 8.0)
    cfg = C.configure_extraction(_cfg())
    texts = ["zzz zzz zzz the cat", "The rain fell on the town."]
    got = {}
    for rd in (False, True):
        p = C.plant_feature(lm, cfg, tmp_path / "m", 64.0, reader=rd)
        try:
            got[rd] = row_means(lm, texts, ["resid_post.2", "resid_post.3"], "all", False, 1, 4)
            assert ("reader" in p.effect) == rd
        finally:
            p.close()
    assert torch.equal(got[False]["resid_post.2"], got[True]["resid_post.2"])
    assert not torch.allclose(got[False]["resid_post.3"], got[True]["resid_post.3"])
