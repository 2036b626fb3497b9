"""The binding positive control: paired slot-vs-random contrasts against hand computation, the
training stories share no name or adjective with the protocol's, the induction examples train
only the continuation, the LoRA is trained once and reused, and detect reads the induction
contrast. The control runs end to end on a tiny model; whether fine-tuning makes the prior slot
causal is measured on SmolLM2 (docs/experiments/binding.md): a tiny random model does not learn
induction in a few LoRA steps."""
import json

import numpy as np
import pytest
import torch

from mindscope.experiments import Detection, _lora, binding, controls, run_control
from mindscope.experiments.binding import control as C
from mindscope.experiments.binding.data import Item, generate_stories
from mindscope.experiments.binding.tasks import paired_contrasts, unit_scores


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(C, "LORA", _lora.LoraPlant(r=4, alpha=8, lr=5e-3, epochs=1, batch_size=4))
    monkeypatch.setattr(C, "N_TRAIN", 6)


def _cfg(data, **over):
    return binding.Config(**{**dict(n_stories=12, layers="1,2", n_items=4, n_names=5,
                                    n_adjectives=6, data_dir=str(data), progress=False,
                                    n_null=2, n_boot=0, n_random=2), **over})


def test_unit_scores_and_paired_contrasts_by_hand():
    items = [Item("induction", "a", [" A", " B"], 0), Item("induction", "b", [" A", " B"], 1),
             Item("retrieval_yes_no", "c", [" Yes", " No"], 1),
             Item("conflict", "d", [" too"], 0, condition="match", pair=0),
             Item("conflict", "e", [" too"], 0, condition="mismatch", pair=0)]
    lp = np.log([0.75, 0.25])
    base = [lp, lp, np.array([-1.0, -3.0]), np.array([-2.0]), np.array([-5.0])]
    u = unit_scores(items, base)
    assert u["induction"] == pytest.approx({0: np.log(0.75), 1: np.log(0.25)})
    assert u["retrieval_yes_no"] == {2: -2.0}  # margin toward "No", the right answer
    assert u["conflict"] == {0: 3.0}
    hurt = [np.log([0.5, 0.5]), np.log([0.5, 0.5]), np.array([-1.0, -3.0]), np.array([-2.0]),
            np.array([-2.0])]
    c = paired_contrasts(items, {"prior": hurt, "random": base})["prior_minus_random"]
    d = [np.log(0.5) - np.log(0.75), np.log(0.5) - np.log(0.25)]
    assert c["induction"]["mean"] == pytest.approx(np.mean(d)) and c["induction"]["n"] == 2
    half = 12.706 * np.std(d, ddof=1) / np.sqrt(2)  # Student t, 1 df
    assert c["induction"]["hi"] - c["induction"]["mean"] == pytest.approx(half, rel=1e-3)
    assert c["conflict"]["mean"] == pytest.approx(-3.0)


def test_training_stories_share_no_entity_with_the_protocol(tiny, tiny_data):
    lm = tiny("llama")
    cfg = _cfg(tiny_data)
    d, split = C.train_data(lm, cfg)
    assert not set(split["train_names"]) & set(split["held_out_names"])
    assert not set(split["train_adjectives"]) & set(split["held_out_adjectives"])
    assert len(split["held_out_names"]) == cfg.n_names
    words = {w.strip(".,") for s in generate_stories(d, 20, (3, 5), 1) for w in s.text.split()}
    assert not words & set(split["held_out_names"]) and not words & set(split["held_out_adjectives"])
    for ids, labels in C.induction_examples(lm, d, 4):
        k = sum(1 for x in labels if x == -100)
        assert 0 < k < len(ids) and labels[k:] == ids[k:]
        assert lm.tokenizer.decode(ids[k:]).strip().endswith(".")


def test_detect_reads_the_induction_contrast():
    res = {"contrasts": {"prior_minus_random": {"induction": {"mean": -0.4, "lo": -0.6,
                                                              "hi": -0.2, "n": 24}}}}
    d = C.detect(res)
    assert d.detected and d.null == 0.0 and d.value == -0.4 and d.direction == -1
    up = C.detect({"contrasts": {"prior_minus_random": {"induction": {
        "mean": 0.4, "lo": 0.2, "hi": 0.6, "n": 24}}}})
    assert not up.detected  # the prior ablation HELPING is not the predicted effect
    assert Detection("m", 0.4, 0.2, 0.6).detected  # a two-sided measure would count it
    with pytest.raises(ValueError, match="prior_minus_random"):
        C.detect({})


def test_control_end_to_end_reuses_the_adapter(tiny, tiny_data, small, tmp_path, monkeypatch):
    lm = tiny("llama")
    assert "binding" in controls()
    res = C.run_lora_control(lm, _cfg(tiny_data), tmp_path / "c", strengths=[1.0], seeds=[0])
    assert controls()["binding"].plant is C.plant  # the registered plant is restored
    r = res.results
    assert r["untouched"][0]["measure"].startswith("induction right-answer log-prob")
    assert r["untouched"][0]["n"] == 24  # configure() raises n_items to 24
    saved = json.loads((tmp_path / "c" / "planted-1" / "seed0" / "results.json").read_text())
    assert set(saved["contrasts"]) == {"current_minus_random", "prior_minus_random"}
    assert "+inductionx1" in saved["model"]
    calls = []
    monkeypatch.setattr(_lora, "_train", lambda *a, **k: calls.append(1))
    p = C.plant_lora(lm, C.configure(_cfg(tiny_data)), tmp_path / "c" / "planted-0.5" / "model",
                     0.5)
    assert calls == [] and p.effect["strength"] == 0.5


def test_seed_table_carries_the_paired_contrasts():
    from mindscope.experiments.seeds import binding_rows

    v = {"mean": -0.3, "lo": -0.5, "hi": -0.1, "n": 24}
    rows = binding_rows({"contrasts": {"prior_minus_random": {"induction": v, "conflict": v}}})
    got = {r["measure"]: r for r in rows}
    r = got["induction: right-answer score, prior minus random (paired, same prompts)"]
    assert (r["value"], r["lo"], r["hi"], r["n"]) == (-0.3, -0.5, -0.1, 24)
    assert len(rows) == 2
    pr = {"test": 0.7, "lo": 0.6, "hi": 0.8, "n_test": 90, "chance": 0.15}
    probes = [{"layer": L, "slots": {"prior": {**pr, "test": a}, "current": pr}}
              for L, a in ((12, 0.7), (24, 0.8))]
    rows = binding_rows({"config": {"ablate_positions": "names"}, "ablation_probes": probes})
    assert [(r["measure"], r["value"]) for r in rows][1] == \
        ("prior-entity probe held-out accuracy at name tokens (layer 24)", 0.8)
    chk = [{"layer": 12, "probe_clean": 0.6, "probe_erased": 0.1, "n_test": 90, "chance": 0.09},
           {"layer": 24, "probe_clean": 0.75, "probe_erased": 0.2, "n_test": 90, "chance": 0.09}]
    (row,) = binding_rows({"erasure_check": chk})
    assert row["measure"].endswith("(layer 24)") and row["value"] == 0.2
    assert row["lo"] < 0.2 < row["hi"] and "clean 0.750" in row["grader"]


def test_mde_of_the_contrast_matches_the_noncentral_t():
    from scipy.stats import t as student_t

    from mindscope.runs import mde_mean

    sd, n = 0.8, 24
    h = float(student_t.ppf(0.975, n - 1)) * sd / np.sqrt(n)
    assert C.mde_contrast({"lo": -h, "hi": h, "n": n}) == pytest.approx(mde_mean(sd, n))
    assert C.mde_contrast({"lo": -h, "hi": h, "n": n}) > h  # 80% power needs more than the CI



def test_control_passes_on_a_planted_slot_and_not_on_the_untouched_model(
        tiny, tiny_data, tmp_path, monkeypatch):
    """With the registered plant (a prior slot that induction reads by construction) the protocol (default ablation rule:
    name tokens, layers where the held-out prior probe reads) detects it below 0 and the
    untouched model shows nothing; deterministic (fixed seeds, no sampling)."""
    lm = tiny("llama")
    res = run_control("binding", lm, _cfg(tiny_data), tmp_path / "c", strengths=[1.0], seeds=[0])
    r = res.results
    (u,), (p,) = r["untouched"], r["planted"]["1"]
    assert p["direction"] == -1 and p["hi"] < 0 and p["detected"], p
    assert not u["detected"] and u["lo"] < 0 < u["hi"], u
    assert res.passed
    saved = json.loads((tmp_path / "c" / "planted-1" / "seed0" / "results.json").read_text())
    row = {a["layer"]: a for a in saved["ablation_probes"]}
    assert saved["config"]["ablate_positions"] == "names"
    acc = {L: a["slots"]["prior"]["test"] for L, a in row.items()}
    assert saved["ablate_layers"] == [max(acc, key=acc.get)]  # where the probe reads best
    assert acc[saved["ablate_layers"][0]] > row[saved["ablate_layers"][0]]["slots"]["prior"]["chance"]
    assert len(saved["random_spread"]["induction"]) == 2
    assert "prior slot x1" in r["effects"]["1"]["summary"]
    # the plant's codes are saved once and reused (a second plant loads, never redraws)
    codes = (tmp_path / "c" / "slot.safetensors").read_bytes()
    p2 = C.plant(lm, C.configure(_cfg(tiny_data)), tmp_path / "c" / "planted-0.5" / "model", 0.5)
    try:
        assert (tmp_path / "c" / "slot.safetensors").read_bytes() == codes
        assert p2.effect["strength"] == 0.5 and p2.effect["read_layer"] == lm.n_layers - 1
    finally:
        p2.close()
    base = lm.forward(["Alice met Bob. Then Alice"])  # hooks removed: the model is untouched
    assert torch.equal(base, lm.forward(["Alice met Bob. Then Alice"]))
