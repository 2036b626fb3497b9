"""Introspection positive control: detect() against Newcombe's interval, the trained-bias plant
(held-out concepts disjoint from training ones, reused from its saved file), and the control run
end to end through the unchanged detection protocol.

A tiny random model cannot write "Yes, I detect ...", so the end-to-end test plants a detector
directly: a hook that, where the residual norm shows an injected thought, pushes the output to a
marker token, and a grader that counts the marker as a detection claim. The untouched model never
emits the marker (greedy decoding), so the untouched TPR - FPR is exactly 0."""
from dataclasses import dataclass

import pytest
import torch

from mindscope.core import Intervention
from mindscope.experiments import Planted, _control, run_control
from mindscope.experiments import introspection as I
from mindscope.experiments.introspection import control as C
from mindscope.experiments.introspection.grade import Grade
from mindscope.runs import newcombe_diff, wilson

CONCEPTS = ["dust", "trees", "frost", "milk", "bread", "snow"]


@pytest.fixture(scope="module")
def lm(tiny):
    return tiny("llama")


def test_detect_pools_cells_and_uses_newcombe():
    res = {"metrics": {"detection": {
        "cells": [{"tpr": wilson(7, 10)}, {"tpr": wilson(5, 10)}],
        "control": {"fpr": wilson(2, 20)}}}}
    d = C.detect_detection(res)
    diff, lo, hi = newcombe_diff(12, 20, 2, 20)
    assert (d.value, d.lo, d.hi) == pytest.approx((diff, lo, hi))
    assert d.detected and d.null == 0 and d.n["injected"] == 20
    res["metrics"]["detection"]["control"]["fpr"] = wilson(11, 20)
    assert not C.detect_detection(res).detected


def test_configure_runs_one_cell_on_the_held_out_half():
    cfg = C.configure_detection(I.Config.quick(mech_layer=2 / 3, mech_strength=4.0))
    assert cfg.protocols == ("detection",) and cfg.strengths == (4.0,)
    assert cfg.layers == (2 / 3,) and not cfg.second_opinion
    train, held = C.bias_split(cfg)
    c0, _ = I.load_words()
    assert held == cfg.words()[0] and set(held) <= set(c0[25:])
    assert train == c0[:25] and not set(train) & set(held)


def test_plant_trains_once_and_reuses_the_saved_bias(lm, tmp_path, monkeypatch):
    cfg = C.configure_detection(I.Config.quick(
        concepts=CONCEPTS[:3], n_baseline=4, mech_layer=2, mech_strength=4.0, bias_steps=2,
        bias_batch=2, progress=False))
    calls = []
    real = C.train_claim_bias
    monkeypatch.setattr(C, "train_claim_bias", lambda *a, **k: calls.append(1) or real(*a, **k))
    p = C.plant_bias(lm, cfg, tmp_path / "m", 1.0)
    site = p.effect["site"]
    assert site == "mlp_out.2" and (tmp_path / "m" / "bias.safetensors").exists()
    assert not set(p.effect["train_concepts"]) & set(p.effect["held_out_concepts"])
    assert p.effect["held_out_concepts"] == CONCEPTS[:3]
    with_bias = lm.capture(["hello there"], sites=site, positions="last")[site]
    p.close()
    plain = lm.capture(["hello there"], sites=site, positions="last")[site]
    p2 = C.plant_bias(lm, cfg, tmp_path / "m", 0.5)
    half = lm.capture(["hello there"], sites=site, positions="last")[site]
    p2.close()
    assert len(calls) == 1  # the second plant loaded the saved bias
    b = with_bias - plain
    assert b.norm() > 0 and torch.allclose(half - plain, 0.5 * b, atol=1e-5)


@dataclass(frozen=True)
class _NormGate(Intervention):
    """Where |h| > tau (an injected thought), add ``big`` x the marker token's unembedding."""

    tau: float
    push: torch.Tensor

    def apply_rows(self, h, rows):
        on = (h.norm(dim=-1, keepdim=True) > self.tau).to(h.dtype)  # (n, 1)
        return h + on * self.push.to(h.dtype)


class _MarkerGrader:
    name = "marker"

    def __init__(self, marker):
        self.marker = marker

    def describe(self):
        return {"name": self.name, "backend": "test"}

    def grade(self, response, concept, prompt=""):
        c = response.startswith(self.marker)
        return Grade(claims=c, identifies=False, coherent=True, grader=self.name)


def test_control_passes_with_a_planted_detector_and_not_untouched(lm, tmp_path, monkeypatch):
    L, last = 2, lm.n_layers - 1
    cfg = I.Config.quick(concepts=CONCEPTS, n_concepts=None, n_baseline=4, mech_layer=L,
                         mech_strength=100.0, max_new_tokens=1, temperature=0.0, n_controls=6,
                         progress=False)
    W = lm.model.get_output_embeddings().weight.detach()  # (V, d)
    marker_id = 50
    marker = lm.tokenizer.decode([marker_id])
    cap = lm.capture([I.trial_prompt(lm, 1, w) for w in range(5)], sites=f"resid_post.{last}")
    tau = 2 * float(cap[f"resid_post.{last}"].norm(dim=-1).max())
    push = 1e3 * W[marker_id] / W[marker_id].norm()

    def plant(lm_, cfg_, work_dir, strength):
        return Planted.hooked(lm_, {"kind": "norm-gated detector", "summary": "test detector"},
                              _NormGate(f"resid_post.{last}", tau=tau, push=push * strength))

    spec = _control.controls()["introspection"]
    monkeypatch.setitem(_control._CONTROLS, "introspection", _control.ControlSpec(
        "introspection", plant, spec.detect, (1.0,), spec.configure))
    monkeypatch.setattr(I, "make_grader", lambda *a, **k: _MarkerGrader(marker))
    res = run_control("introspection", lm, cfg, tmp_path / "c", seeds=[0, 1])
    r = res.results
    assert [d["value"] for d in r["untouched"]] == [0.0, 0.0]  # marker never emitted untouched
    assert all(d["value"] == 1.0 and d["detected"] for d in r["planted"]["1"])
    assert res.passed and r["planted"]["1"][0]["n"]["injected"] == len(CONCEPTS)


def test_a_partial_run_is_resumed_not_reused(lm, tmp_path, monkeypatch):
    """introspection saves results.json marked partial after each protocol: the control runner
    and the seeds tool must resume such a run (it was killed), not count it as finished."""
    import json

    from mindscope.experiments import seeds
    from mindscope.experiments._control import finished

    run = tmp_path / "seed0"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"partial": True, "metrics": {}}))
    assert not finished(run) and not finished(tmp_path / "none")
    called = []
    monkeypatch.setattr(seeds, "run_protocol", lambda *a: called.append(a[2]))
    monkeypatch.setattr(seeds, "aggregate", lambda *a, **k: {})
    monkeypatch.setattr(seeds, "table_md", lambda h: "")
    import mindscope as ms

    monkeypatch.setattr(ms, "load", lambda *a, **k: lm)
    seeds.main(["introspection", "--seeds", "0", "-o", str(tmp_path)])
    assert called == [0]  # the partial seed was run again
    (run / "results.json").write_text(json.dumps({"metrics": {}}))
    assert finished(run)
    seeds.main(["introspection", "--seeds", "0", "-o", str(tmp_path)])
    assert called == [0]  # a finished seed is skipped


def test_claim_trainer_targets_the_reply_and_lowers_its_loss(lm):
    ids, mask, pos, inj, tgt = C._reply_batch(lm, 1, 2, C.CLAIMS[0], rows=2)
    assert lm.tokenizer.decode(ids[0, tgt[0]]).strip() == C.CLAIMS[0]
    text = lm.tokenizer.decode(ids[0, inj[0]])
    assert text.startswith(lm.tokenizer.decode(ids[0, int(inj[0].nonzero()[0])]))
    assert "Trial 1" in text and "Trial 1" not in lm.tokenizer.decode(ids[0, ~inj[0]])
    cfg = I.Config(bias_steps=6, bias_batch=2, bias_lr=0.05, mech_strength=4.0, progress=False)
    w0 = [p.clone() for p in lm.model.parameters()][:3]
    b, hist = C.train_claim_bias(lm, cfg, torch.randn(3, lm.d_model), inj_layer=2, bias_layer=2)
    assert b.shape == (lm.d_model,) and not b.requires_grad
    assert [h["wording"] for h in hist] == [0, 1, 2, 3, 4, 0]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert all(torch.equal(a, p) for a, p in zip(w0, lm.model.parameters()))


# ---- the detector LoRA (detector.py) ------------------------------------------------------

from mindscope.experiments.introspection import detector as D  # noqa: E402


def _lora_cfg(**kw):
    return C.configure_detection(I.Config.quick(
        concepts=CONCEPTS[:3], n_baseline=4, mech_layer=2, mech_strength=4.0, progress=False, **kw))


def test_detector_lora_is_saved_reused_and_scaled_by_strength(lm, tmp_path, monkeypatch):
    cfg, spec = _lora_cfg(), D.DetectorLoRA(rank=2, steps=2, batch=2, targets=("v_proj", "up_proj"))
    calls = []
    real = D.train_detector_lora
    monkeypatch.setattr(D, "train_detector_lora", lambda *a, **k: calls.append(1) or real(*a, **k))
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    p1 = D.plant_detector(lm, cfg, tmp_path / "planted-1" / "model", 1.0, spec)
    f1 = tmp_path / "planted-1" / "model" / "detector_lora.safetensors"
    assert f1.exists() and p1.lm is not lm and p1.close is None
    e = p1.effect
    assert e["kind"] == "detector LoRA" and e["held_out_concepts"] == CONCEPTS[:3]
    assert not set(e["train_concepts"]) & set(e["held_out_concepts"])
    assert e["modules"] == ["model.layers.3.mlp.up_proj", "model.layers.3.self_attn.v_proj"]
    p2 = D.plant_detector(lm, cfg, tmp_path / "planted-0.5" / "model", 0.5, spec)
    assert len(calls) == 1  # the second strength reused the adapter trained for the first
    assert (tmp_path / "planted-0.5" / "model" / "detector_lora.safetensors").exists()
    t = I.control.load_safetensors(f1, "lora")
    w0, w1, w2 = (m.state_dict() for m in (lm.model, p1.lm.model, p2.lm.model))
    for name in e["modules"]:
        A, B = t[f"{name}.lora_A"], t[f"{name}.lora_B"]  # (r, in), (out, r)
        delta = (spec.alpha / spec.rank) * B @ A
        assert delta.norm() > 0  # B moved off its zero init in two steps
        k = f"{name}.weight"
        assert torch.allclose(w1[k] - w0[k], delta, atol=1e-6)
        assert torch.allclose(w2[k] - w0[k], 0.5 * delta, atol=1e-6)
    untouched = [k for k in w0 if not any(k.startswith(m) for m in e["modules"])]
    assert all(torch.equal(w1[k], w0[k]) for k in untouched)
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())


def test_control_passes_with_a_trained_detector_lora(lm, tmp_path, monkeypatch):
    """On the tiny model the LoRA learns the marker reply under a strength-100 injection of
    training concepts, and the unchanged protocol sees it on held-out concepts (greedy)."""
    marker, other = lm.tokenizer.decode([50]), lm.tokenizer.decode([60])
    cfg = I.Config.quick(concepts=CONCEPTS, n_concepts=None, n_baseline=4, mech_layer=2,
                         mech_strength=100.0, max_new_tokens=1, temperature=0.0, n_controls=6,
                         progress=False)
    spec = D.DetectorLoRA(rank=4, steps=60, lr=3e-2, batch=4, replies=(marker, other))

    def plant(lm_, cfg_, work_dir, strength):
        return D.plant_detector(lm_, cfg_, work_dir, strength, spec)

    reg = _control.controls()["introspection"]
    monkeypatch.setitem(_control._CONTROLS, "introspection", _control.ControlSpec(
        "introspection", plant, reg.detect, (1.0,), reg.configure))
    monkeypatch.setattr(I, "make_grader", lambda *a, **k: _MarkerGrader(marker))
    res = run_control("introspection", lm, cfg, tmp_path / "c", seeds=[0])
    r = res.results
    assert r["untouched"][0]["value"] == 0.0  # the untouched model never emits the marker
    assert r["planted"]["1"][0]["value"] == 1.0 and res.passed  # every held-out trial detected
    assert r["effects"]["1"]["kind"] == "detector LoRA"
    assert (tmp_path / "c" / "planted-1" / "model" / "detector_lora.safetensors").exists()
