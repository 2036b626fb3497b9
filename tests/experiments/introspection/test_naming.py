"""The naming plant (identification half of the introspection control, ``naming.py``): the
train / held-out split, the teacher-forcing targets (the concept's word on injected rows only),
the saved adapter reused, and the naming measures against Newcombe's interval by hand."""
import json

import pytest
import torch

from mindscope.experiments import introspection as I
from mindscope.experiments.introspection import control as C
from mindscope.experiments.introspection import detector as D
from mindscope.experiments.introspection import naming as N
from mindscope.runs import newcombe_diff, wilson

CONCEPTS = ["dust", "trees", "frost"]


@pytest.fixture(scope="module")
def lm(tiny):
    return tiny("llama")


def _cfg(**kw):
    return C.configure_detection(I.Config.quick(
        concepts=CONCEPTS, n_baseline=4, mech_layer=2, mech_strength=4.0, progress=False, **kw))


def _spec(**kw):
    return D.DetectorLoRA(**{**dict(rank=2, steps=2, batch=2, targets=("v_proj",),
                                    replies=N.NAMING_REPLIES), **kw})


def test_split_is_disjoint_by_concept_word_and_recorded(lm, tmp_path):
    p = N.plant_naming(lm, _cfg(), tmp_path / "planted-1" / "model", 1.0, _spec())
    e = p.effect
    c0, _ = I.load_words()
    assert e["kind"] == "naming LoRA" and e["held_out_concepts"] == CONCEPTS
    assert e["train_concepts"] == [w for w in c0 if w not in CONCEPTS]
    assert not {w.lower() for w in e["train_concepts"]} & {w.lower() for w in CONCEPTS}
    assert "{concept}" in e["trained_on"]  # the reply template, not one concept's word
    assert (tmp_path / "planted-1" / "model" / "naming_lora.safetensors").exists()
    # the registered (claims-only) control's default split is the shipped list's two halves
    train, held = C.bias_split(C.configure_detection(I.Config.quick(n_concepts=20)))
    assert held == c0[25:45] and train == c0[:25]


def test_targets_name_the_concept_on_injected_rows_only(lm, monkeypatch):
    seen = []
    real = D.pair_losses

    def spy(lm_, cfg, wording, V, inj, replies, n_control, extra=()):
        seen.append((wording, V.clone(), replies))
        return real(lm_, cfg, wording, V, inj, replies, n_control, extra)

    monkeypatch.setattr(D, "pair_losses", spy)
    names = ["snow", "milk", "bread", "silver"]
    V = torch.randn(4, lm.d_model)
    D.train_detector_lora(lm, _cfg(), V, 2, _spec(steps=3, batch=2), names=names)
    assert len(seen) == 3
    for wording, Vp, (yes, no) in seen:
        assert len(yes) == 2 and isinstance(no, str)
        for row, reply in zip(Vp, yes):
            i = next(j for j in range(4) if torch.equal(V[j], row))  # the injected concept
            assert reply == N.NAMING_REPLIES[0].format(concept=names[i])
        assert not any(w in no for w in names)
        # the teacher-forcing targets are exactly each row's reply (rows left-padded apart)
        ids, _, _, inj, tgt = C._reply_batch(lm, 1, wording, yes, rows=2)
        for r in range(2):
            assert lm.tokenizer.decode(ids[r, tgt[r]]).strip() == yes[r]
            assert inj[r].sum() > tgt[r].sum() and bool(inj[r][tgt[r]].all())
        ids, _, _, _, tgt = C._reply_batch(lm, 1, wording, no, rows=1)
        assert lm.tokenizer.decode(ids[0, tgt[0]]).strip() == no


def test_a_naming_reply_needs_the_names():
    with pytest.raises(ValueError, match="one name per row"):
        D.train_detector_lora(None, _cfg(), torch.zeros(2, 8), 2, _spec())
    with pytest.raises(ValueError, match="must not name"):
        D.train_detector_lora(None, _cfg(), torch.zeros(2, 8), 2,
                              _spec(replies=("Yes", "No, not {concept}")), names=["a", "b"])


def test_plant_reuses_its_saved_adapter(lm, tmp_path, monkeypatch):
    calls = []
    real = D.train_detector_lora
    monkeypatch.setattr(D, "train_detector_lora", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg, spec = _cfg(), _spec()
    p1 = N.plant_naming(lm, cfg, tmp_path / "planted-1" / "model", 1.0, spec)
    p1b = N.plant_naming(lm, cfg, tmp_path / "planted-1" / "model", 1.0, spec)
    p2 = N.plant_naming(lm, cfg, tmp_path / "planted-0.5" / "model", 0.5, spec)
    assert len(calls) == 1  # trained once: the same folder, then another strength, reuse it
    assert (tmp_path / "planted-0.5" / "model" / "naming_lora.safetensors").exists()
    w = [p.lm.model.state_dict() for p in (p1, p1b, p2)]
    base = lm.model.state_dict()
    k = "model.layers.3.self_attn.v_proj.weight"
    assert torch.equal(w[0][k], w[1][k]) and not torch.equal(w[0][k], base[k])
    assert torch.allclose(w[2][k] - base[k], 0.5 * (w[0][k] - base[k]), atol=1e-6)
    # a detector adapter with otherwise equal settings is not taken for the naming one
    D.plant_detector(lm, cfg, tmp_path / "planted-1" / "model", 1.0, _spec(replies=C.CLAIMS))
    assert len(calls) == 2


def _run(d, comb, ment, ctl_ident):
    """A fake detection run folder: one cell with combined / mentions (k, n), identification
    k of the claims, and control trials of which ``ctl_ident`` claim and name their label."""
    d.mkdir(parents=True)
    k, n = comb
    res = {"metrics": {"detection": {"cells": [{
        "combined": wilson(k, n), "mentions": wilson(*ment), "tpr": wilson(k + 2, n),
        "identification": wilson(k, k + 2)}], "control": {"fpr": wilson(ctl_ident + 1, 20)}}}}
    (d / "results.json").write_text(json.dumps(res))
    ctl = [{"kind": "control", "identifies": i < ctl_ident} for i in range(20)]
    (d / "trials.json").write_text(json.dumps({"detection": ctl + [
        {"kind": "injected", "identifies": True}]}))
    return {**res, "run_dir": str(d)}


def test_detect_naming_and_the_strict_test_by_hand(tmp_path):
    res = _run(tmp_path / "planted-1" / "seed0", (14, 20), (15, 20), 1)
    d = N.detect_naming(res)
    assert (d.value, d.lo, d.hi) == pytest.approx(newcombe_diff(14, 20, 1, 20))
    assert d.detected and d.direction == 1 and d.n["control_k"] == 1
    assert not N.detect_naming(_run(tmp_path / "u" / "seed0", (1, 20), (3, 20), 0)).detected
    _run(tmp_path / "untouched" / "seed0", (0, 20), (6, 20), 0)
    _run(tmp_path / "planted-0.5" / "seed0", (5, 20), (9, 20), 0)
    s = N.summarize(tmp_path, [0], [0.5, 1.0], n_held=20)
    st = s["strict"][0]
    assert (st["value"], st["lo"], st["hi"]) == pytest.approx(newcombe_diff(14, 20, 6, 20))
    assert st["detected"] == (st["lo"] > 0) and s["strict_passed"] == st["detected"]
    r = s["runs"]["x1"][0]
    assert r["identification"]["k"] == 14 and r["identification"]["above_chance"]
    assert r["detection"]["value"] == pytest.approx(newcombe_diff(16, 20, 2, 20)[0])
    assert s["runs"]["untouched"][0]["identification"]["above_chance"] is False
    assert "| x1 | 0 |" in N.markdown(s)


def test_a_killed_training_resumes_to_the_same_adapter(lm, tmp_path, monkeypatch):
    cfg, spec = _cfg(), _spec(steps=4, batch=2)
    V, names = torch.randn(3, lm.d_model), ["snow", "milk", "bread"]
    full, hist = D.train_detector_lora(lm, cfg, V, 2, spec, names=names)
    real, calls = D.pair_losses, []

    def dies_at_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed during step 3, after the checkpoint of step 2
        return real(*a, **k)

    monkeypatch.setattr(D, "pair_losses", dies_at_step_3)
    ck = tmp_path / "ck.safetensors"
    with pytest.raises(KeyboardInterrupt):
        D.train_detector_lora(lm, cfg, V, 2, spec, names=names, checkpoint=ck, key="k",
                              save_every=1)
    monkeypatch.setattr(D, "pair_losses", real)
    assert ck.exists()
    resumed, hist2 = D.train_detector_lora(lm, cfg, V, 2, spec, names=names, checkpoint=ck,
                                           key="k", save_every=1)
    assert [h["step"] for h in hist2] == [0, 1, 2, 3]
    assert [h["loss"] for h in hist2] == pytest.approx([h["loss"] for h in hist], rel=1e-5)
    for m, (A, B) in full.items():
        assert torch.allclose(resumed[m][0], A, atol=1e-6)
        assert torch.allclose(resumed[m][1], B, atol=1e-6)
    # a checkpoint of other settings is not used: training starts again from step 0
    _, hist3 = D.train_detector_lora(lm, cfg, V, 2, spec, names=names, checkpoint=ck,
                                     key="other", save_every=10)
    assert [h["step"] for h in hist3] == [0, 1, 2, 3]


def test_run_naming_control_swaps_the_plant_and_restores_it(tmp_path, monkeypatch):
    from mindscope.experiments import _control

    before = _control.controls()["introspection"]
    seen = {}

    def fake_run_control(name, lm, cfg, out, strengths, seeds):
        spec = _control.controls()[name]
        seen["plant"], seen["detect"] = spec.plant.__doc__, spec.detect
        for folder, comb in (("untouched", (0, 20)), ("planted-0.5", (6, 20)),
                             ("planted-1", (15, 20))):
            _run(out / folder / "seed0", comb, (comb[0] + 2, 20), 0)
        return _control.ControlResult(out, {"seeds": [0], "strengths": [0.5, 1.0],
                                            "passed": True})

    monkeypatch.setattr(N, "run_control", fake_run_control)
    res, s = N.run_naming_control(None, I.Config.quick(n_concepts=20), tmp_path, lens=False)
    assert seen["plant"] == N.plant_naming.__doc__ and seen["detect"] is N.detect_naming
    after = _control.controls()["introspection"]
    assert after.plant is before.plant and after.detect is before.detect
    assert s["chance"] == pytest.approx(1 / 20) and s["control_passed"]
    assert s["strict"][0]["value"] == pytest.approx(newcombe_diff(15, 20, 2, 20)[0])
    assert (tmp_path / "naming.md").exists() and (tmp_path / "naming.png").exists()


def test_confusions_sort_named_words_and_rank_training_words_by_cosine(lm, tmp_path):
    cfg = _cfg()
    train = ["snow", "milk", "bread"]
    (tmp_path / "control.json").write_text(json.dumps(
        {"effects": {"1": {"train_concepts": train}}}))
    replies = {"dust": "Yes, I detect an injected thought. It is about dust.",
               "trees": "Yes, I detect an injected thought. It is about the milk. It",
               "frost": "No, I do not detect an injected thought."}
    d = tmp_path / "planted-1" / "seed0"
    d.mkdir(parents=True)
    (d / "trials.json").write_text(json.dumps({"detection": [
        {"kind": "injected", "concept": c, "response": r} for c, r in replies.items()]}))
    c = N.confusions(lm, I.Config.quick(concepts=CONCEPTS, n_baseline=4, mech_layer=2,
                                        progress=False), tmp_path, [0], 1.0)
    assert (c["n"], c["own"], c["training"], c["nothing_named"], c["other"]) == (3, 1, 1, 1, 0)
    row = c["rows"][1]
    assert row["named"] == "milk" and row["training_word"] == "milk"
    V = I.concept_sets(lm, CONCEPTS + train, [2], cfg.words()[1])[2].data.float()
    V = V / V.norm(dim=-1, keepdim=True)
    cos = V[1] @ V[3:].T  # trees vs the training words
    assert row["cos_rank"] == int((cos > cos[1]).sum())


def test_extra_training_words_avoid_the_baseline_and_every_concept():
    cfg = C.configure_detection(I.Config.quick(n_concepts=20))
    train, held = C.bias_split(cfg)
    extra = D.extra_training_words(cfg, held + train, 80)
    _, base = cfg.words()
    assert len(base) == 20 and len(extra) == 78  # 80 unused nouns, 2 of them training concepts
    assert not {w.lower() for w in extra} & {w.lower() for w in base + train + held}
    assert not any(I.grade.word_matches(w, h) or I.grade.word_matches(h, w)
                   for w in extra for h in held + train)
    assert len(D.extra_training_words(cfg, held + train, 5)) == 5
