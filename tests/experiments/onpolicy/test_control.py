"""The on-policy positive control: the distillation split is disjoint from what the protocol
measures, the LoRA plant is trained once and reused, its strength scales the trained weight
change exactly, and detect reads the headline ratio. The full control (plant + protocol +
detection) runs on a tiny model; the planted entropy effect itself is measured on SmolLM2
(docs/experiments/onpolicy.md), because a tiny random model has near-uniform next-token
distributions that self-distillation cannot sharpen selectively."""
import dataclasses
import json
import math

import pytest
import torch

from mindscope.experiments import _lora, controls, onpolicy, run_control
from mindscope.experiments.onpolicy import control as C
from mindscope.experiments.onpolicy.core import shipped

TINY = dict(n_prompts=4, max_new_tokens=6, n_boot=50, batch_size=8)


@pytest.fixture(scope="module")
def lm(tiny):
    return tiny("llama")


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(C, "LORA", _lora.LoraPlant(r=4, alpha=8, lr=5e-3, epochs=1, batch_size=4))
    monkeypatch.setattr(C, "N_DISTILL", 6)
    monkeypatch.setattr(C, "DISTILL_TOKENS", 5)
    monkeypatch.setattr(C, "N_DOCS_QA", 4)
    monkeypatch.setattr(C, "SPARE_REPEAT", 1)
    monkeypatch.setattr(C, "ANCHOR_TOKENS", 8)


def test_distillation_prompts_are_disjoint_from_the_measured_ones():
    prompts, src = C.distill_prompts(1000)
    shipped_prompts = {r["prompt"].lower() for r in shipped("prompts")}
    assert prompts and not shipped_prompts & {p.lower() for p in prompts}
    assert src["removed_overlap"] == src["pool"] - len(prompts) > 0  # some chat prompts collide


def test_anchor_texts_are_human_written_and_never_a_measured_answer():
    rows = shipped("prompts")
    for n in (4, 12, 23, 24):
        spare = C.spare_rows(n)
        measured = rows[:n]
        pairs, src = C.anchor_texts(n_docs=10, spare=spare)
        assert src["shipped_answers"] == [r["id"] for r in rows[n:]]  # exactly the unmeasured
        assert src["stdlib_docs_qa"] == 10 and src["emotion_stories"] > 0
        written = shipped("anchor_answers")[:C.N_WRITTEN]
        assert src["written_answers"] == len(written)
        n_kind = (len(spare) + len(written)) * C.SPARE_REPEAT
        assert len(pairs) == n_kind + 10 + src["emotion_stories"]
        assert not {a for _, a in pairs} & {r["human"] for r in measured}  # never measured text
        assert not {p for p, _ in pairs} & {r["prompt"] for r in measured}
        assert {a for _, a in pairs[:n_kind]} == {r["human"] for r in rows[n:] + written}
    assert C.anchor_texts(n_docs=0, spare=C.spare_rows(24))[1]["shipped_answers"] == []
    assert all(a.strip() for _, a in C.anchor_texts(n_docs=10, spare=C.spare_rows(12))[0])


def test_written_anchor_answers_pair_distillation_prompts_and_no_shipped_one():
    """data/onpolicy/anchor_answers.jsonl: human answers to distillation prompts (the same prompt
    is sharpened with the model's own answer and kept with the human one), none a shipped
    on-policy prompt or answer, so the anchor is disjoint from the measure at any n_prompts."""
    rows, distill = shipped("anchor_answers"), C.distill_prompts()[0]
    assert len(rows) >= C.N_WRITTEN and len({r["id"] for r in rows}) == len(rows)
    assert {r["prompt"] for r in rows} <= set(distill)
    on = shipped("prompts")
    assert not {r["prompt"].lower() for r in rows} & {r["prompt"].lower() for r in on}
    assert not {r["human"] for r in rows} & {r["human"] for r in on}
    assert all(len(r["human"].split()) >= 10 for r in rows)


def test_examples_train_only_the_answer(lm):
    ex = C.distill_examples(lm, ["Hello there", "Tell me a story"], max_new_tokens=4)
    for ids, labels in ex:
        n_prompt = sum(1 for x in labels if x == -100)
        assert n_prompt > 0 and labels[n_prompt:] == ids[n_prompt:]
        assert 0 < len(ids) - n_prompt <= 4


def test_plant_trains_once_reuses_and_scales_the_delta(lm, small, tmp_path, monkeypatch):
    cfg = C.configure(onpolicy.Config.quick(**TINY))
    assert cfg.protocols == ("gap",) and cfg.offpolicy == ("human",)
    work = tmp_path / "ctrl" / "planted-1" / "model"
    p1 = C.plant(lm, cfg, work, 1.0)
    info = json.loads((tmp_path / "ctrl" / "lora" / "train_info.json").read_text())
    assert info["steps"] > 0 and (tmp_path / "ctrl" / "lora" / "adapter_model.safetensors").exists()
    assert "held_out" in p1.effect and "trained_on" in p1.effect
    calls = []
    monkeypatch.setattr(_lora, "_train", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(C, "distill_examples", lambda *a, **k: calls.append(1))
    p_half = C.plant(lm, cfg, tmp_path / "ctrl" / "planted-0.5" / "model", 0.5)
    assert calls == []  # the saved adapter was reused: no generation, no training
    base = dict(lm.model.named_parameters())
    w1, wh = dict(p1.lm.model.named_parameters()), dict(p_half.lm.model.named_parameters())
    moved = [k for k in base if not torch.equal(w1[k], base[k])]
    assert moved  # the LoRA changed some weights ...
    for k in moved:  # ... and strength 0.5 is exactly half of the trained change
        torch.testing.assert_close(wh[k] - base[k], 0.5 * (w1[k] - base[k]), atol=1e-6, rtol=1e-4)
    assert all(torch.equal(w, base[k]) for k, w in dict(lm.model.named_parameters()).items())


def test_plant_records_its_shipped_prompts_and_refuses_a_run_that_measures_them(
        lm, small, tmp_path, monkeypatch):
    from mindscope.core import BadInputError

    cfg4 = C.configure(onpolicy.Config.quick(**TINY))  # measures p01-p04
    p = C.plant(lm, cfg4, tmp_path / "ctrl" / "planted-1" / "model", 1.0)
    spare = [f"p{i:02d}" for i in range(5, 25)]
    info = json.loads((tmp_path / "ctrl" / "lora" / "train_info.json").read_text())
    assert info["meta"]["shipped_prompts"] == spare == p.effect["shipped_prompts_trained_on"]
    assert info["meta"]["anchors"]["shipped_answers"] == spare
    assert info["meta"]["distill_shipped"] == len(spare)
    assert "p01-p04" in p.effect["held_out"]
    calls = []
    monkeypatch.setattr(_lora, "_train", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(C, "distill_examples", lambda *a, **k: calls.append(1))
    cfg12 = dataclasses.replace(cfg4, n_prompts=12)  # would measure p05-p12, trained on above
    with pytest.raises(BadInputError, match=r"p05, .*p12, which this run measures \(n_prompts=12\).*new output folder"):
        C.plant(lm, cfg12, tmp_path / "ctrl" / "planted-0.5" / "model", 0.5)
    assert calls == []  # refused before any generation or training


def test_plant_at_every_shipped_prompt_anchors_without_shipped_answers(lm, small, tmp_path,
                                                                       caplog):
    cfg = C.configure(onpolicy.Config.quick(**{**TINY, "n_prompts": 24}))
    with caplog.at_level("WARNING"):
        p = C.plant(lm, cfg, tmp_path / "c" / "planted-1" / "model", 1.0)
    assert "measures every shipped prompt" in caplog.text
    assert p.effect["shipped_prompts_trained_on"] == []
    assert "0 unmeasured shipped on-policy prompts" in p.effect["trained_on"]


def _gap(off, on):
    return {"gap": {"per_prompt": {"human": {str(i): v for i, v in enumerate(off)},
                                   "own": {str(i): v for i, v in enumerate(on)}}}}


def test_paired_vs_untouched_is_a_paired_bootstrap_of_the_ratio_of_ratios():
    import numpy as np

    from mindscope.runs import bootstrap_ci

    rng = np.random.default_rng(3)
    u_off, u_on, p_off = rng.uniform(1, 3, (3, 8))
    r = C.paired_vs_untouched(_gap(p_off, u_on / 2), _gap(u_off, u_on), n_boot=200, seed=1)
    # a manual computation with the same index stream (one index set for all four arrays)
    ref = bootstrap_ci(lambda i: (p_off[i].sum() / (u_on[i] / 2).sum())
                       / (u_off[i].sum() / u_on[i].sum()), 8, 200, 1)
    assert r["n"] == 8 and r["ratio_of_ratios"] == pytest.approx(ref[0])
    assert r["ci"] == pytest.approx(list(ref[1:]))
    # planted = untouched with the own entropy halved everywhere: exactly 2, whatever the resample
    same = C.paired_vs_untouched(_gap(u_off, u_on / 2), _gap(u_off, u_on), n_boot=100)
    assert same["ratio_of_ratios"] == pytest.approx(2) and same["ci"] == pytest.approx([2, 2])
    # only prompts both runs hold are paired
    short = _gap(u_off[:5], u_on[:5])
    assert C.paired_vs_untouched(_gap(u_off, u_on), short, n_boot=10)["n"] == 5
    with pytest.raises(ValueError, match="per_prompt"):
        C.paired_vs_untouched({"gap": {}}, short)


def test_detect_reads_the_human_ratio():
    d = C.detect({"gap": {"ratios": {"human": {"ratio": 1.6, "ci": [1.2, 2.0], "n": 12}}}})
    assert d.detected and d.null == 1.0 and d.n == 12
    assert not C.detect({"gap": {"ratios": {"human": {"ratio": 1.1, "ci": [0.9, 1.3],
                                                       "n": 12}}}}).detected
    with pytest.raises(ValueError, match="gap.ratios.human"):
        C.detect({"gap": {}})


def test_control_runs_end_to_end(lm, small, tmp_path):
    assert "onpolicy" in controls()
    cfg = onpolicy.Config.quick(**TINY)
    res = run_control("onpolicy", lm, cfg, tmp_path / "c", strengths=[1.0], seeds=[0])
    r = res.results
    assert set(r["planted"]) == {"1"} and len(r["untouched"]) == 1
    assert r["untouched"][0]["measure"].startswith("off/on entropy ratio")
    saved = json.loads((tmp_path / "c" / "planted-1" / "seed0" / "results.json").read_text())
    assert saved["config"]["protocols"] == ["gap"] and "+selfdistillx1" in saved["model"]
    assert r["effects"]["1"]["kind"].startswith("LoRA self-distillation")
    for run in ("untouched", "planted-1"):  # paired: own and human sides hold the same prompts
        g = json.loads((tmp_path / "c" / run / "seed0" / "results.json").read_text())["gap"]
        n = g["ratios"]["human"]["n"]
        assert g["conditions"]["own"]["n"] == g["conditions"]["human"]["n"] == n == g["n_prompts"]
        assert len(g["per_prompt"]["own"]) == len(g["per_prompt"]["human"]) == n
        assert sum(g["per_prompt"]["own"].values()) / n == pytest.approx(
            g["conditions"]["own"]["mean"])
    (row,) = C.paired_rows(tmp_path / "c", n_boot=20)
    assert row["seed"] == 0 and row["n"] == n and row["ratio_of_ratios"] > 0


def test_mde_ratio_reads_the_log_interval():
    from mindscope.runs import mde_mean

    se = 0.1
    det = {"lo": math.exp(-1.96 * se), "hi": math.exp(1.96 * se), "n": 12}
    assert C.mde_ratio(det) == pytest.approx(math.exp(mde_mean(se * math.sqrt(12), 12)))
