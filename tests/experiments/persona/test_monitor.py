"""The fixed-axis drift monitor: the saved axis round-trips (a run with ``axis_from`` measures
with exactly the saved axis, floors and threshold), mismatched axes are refused before any
generation, and the threshold is the requested quantile of the calibration projections."""
import json

import numpy as np
import pytest
import torch

from mindscope import VectorSet
from mindscope.core import BadInputError
from mindscope.experiments import persona
from mindscope.experiments.persona import monitor as M


@pytest.fixture(scope="module")
def lm(tiny):
    return tiny("llama")


def _cfg(**over):
    return persona.Config.quick(**{**dict(
        n_roles=4, n_questions=1, n_default_prompts=2, max_new_tokens=3, drift_tokens=3,
        role_filter="none", cap_layers=(2, 3), parts=("drift",), second_opinion=False,
        monitor_questions=8), **over})


@pytest.fixture(scope="module")
def ref(lm, tmp_path_factory):
    d = tmp_path_factory.mktemp("persona-ref")
    persona.run(lm, _cfg(), d)
    return d


def test_threshold_is_the_requested_quantile_of_a_constructed_set():
    xs = [float(x) for x in np.random.default_rng(0).permutation(np.arange(1, 41))] + [float("nan")]
    thr = M.monitor_threshold(xs, 0.05)
    # linear interpolation: position 0.05 * 39 = 1.95 between the 2nd (2) and 3rd (3) smallest
    assert thr == pytest.approx(2.95)
    assert thr == pytest.approx(float(np.quantile(np.arange(1, 41), 0.05)))
    assert M.flagged(xs, thr) == 2  # 2/40 = 5% of the calibration set, the NaN never flagged
    assert M.monitor_threshold(xs, 0.5) == pytest.approx(20.5)
    with pytest.raises(ValueError, match="finite"):
        M.monitor_threshold([float("nan")], 0.05)


def test_calibration_is_the_quantile_of_the_default_answers_projections(lm, ref):
    r = json.loads((ref / "results.json").read_text())
    mon = r["drift"]["monitor"]
    xs = mon["calibration_projections"]
    assert mon["n_calibration"] == len(xs) == 8 and mon["quantile"] == 0.05
    assert mon["threshold"] == pytest.approx(float(np.quantile(xs, 0.05)))
    assert mon["flagged_calibration"]["k"] == sum(x < mon["threshold"] for x in xs) == 1
    # the statistic is drift's own per-turn projection: the calibration questions run as a drift
    # set on the saved axis give the same numbers
    from mindscope.experiments.persona.effects import drift
    axis, meta = M.load_axis(ref, lm)
    sys_prompt = persona.data.load_roles()["default_system_prompts"][0]
    d = drift(lm, {"c": [[q] for q in M.calibration_questions(8)]}, sys_prompt, axis,
              meta["layer"], None, 3, 32)
    assert [t[0] for t in d["per_conversation"]["default"]["c"]] == pytest.approx(xs, abs=1e-4)
    # flag counts of the run's drift sets use that threshold
    per = r["drift"]["per_conversation"]["default"]
    for name, w in mon["flagged"].items():
        assert w["k"] == sum(t < mon["threshold"] for c in per[name] for t in c)


def test_saved_axis_round_trips_and_a_fixed_axis_run_uses_it(lm, ref, tmp_path):
    r = json.loads((ref / "results.json").read_text())
    axis, meta = M.load_axis(ref / M.AXIS_FILE, lm)
    saved = VectorSet.load(ref / M.AXIS_FILE)
    assert torch.equal(axis, saved.data) and axis.shape == (lm.n_layers, lm.d_model)
    assert (meta["model"], meta["n_layers"], meta["d_model"], meta["layer"]) == (
        lm.name, lm.n_layers, lm.d_model, r["layer"])
    assert meta["cap_thresholds"] == r["cap_thresholds"]
    assert meta["monitor"]["threshold"] == r["drift"]["monitor"]["threshold"]
    # a run with axis_from measures with exactly the saved axis, floors and threshold; same
    # model and seed: its own rebuilt axis equals the reference and so do its projections
    res = persona.run(lm, _cfg(axis_from=str(ref)), tmp_path / "fixed")
    r2 = json.loads((tmp_path / "fixed" / "results.json").read_text())
    assert torch.equal(res.axis.data, saved.data)
    assert torch.equal(VectorSet.load(tmp_path / "fixed" / M.AXIS_FILE).data, saved.data)
    assert r2["cap_thresholds"] == r["cap_thresholds"]
    assert r2["drift"]["monitor"]["threshold"] == r["drift"]["monitor"]["threshold"]
    assert r2["axis_source"]["axis_from"] == str(ref / M.AXIS_FILE)
    own = VectorSet.load(tmp_path / "fixed" / M.OWN_AXIS_FILE).data
    assert torch.allclose(own, saved.data, atol=1e-5)
    assert r2["axis_source"]["cos_own_axis"][r["layer"]] == pytest.approx(1.0, abs=1e-5)
    a, b = (x["drift"]["per_conversation"]["default"] for x in (r, r2))
    assert a.keys() == b.keys()
    for k in a:
        assert np.allclose(a[k], b[k], atol=1e-4)
    # the copy names its source and can itself be reused
    assert M.load_axis(tmp_path / "fixed", lm)[1]["copied_from"] == str(ref / M.AXIS_FILE)


def _save(path, data, meta, method="assistant_axis", model="tiny"):
    VectorSet(data, names=[f"resid_post.{i}" for i in range(len(data))], model=model,
              method=method, meta=meta).save(path)
    return path


def test_mismatched_axis_is_refused_before_any_generation(lm, ref, tmp_path, monkeypatch):
    axis, meta = M.load_axis(ref, lm)
    meta = {k: v for k, v in meta.items() if k != "path"}
    L, d = axis.shape
    with pytest.raises(BadInputError, match="axis_from: no saved Assistant axis"):
        persona.Config(axis_from=str(tmp_path / "nowhere"))
    bad = _save(tmp_path / "d.safetensors", torch.zeros(L, d + 1), {**meta, "d_model": d + 1})
    with pytest.raises(BadInputError, match=f"hidden size {d + 1}.*has {d}"):
        M.load_axis(bad, lm)
    bad = _save(tmp_path / "l.safetensors", torch.zeros(L + 2, d), {**meta, "n_layers": L + 2})
    with pytest.raises(BadInputError, match=f"{L + 2} layers.*has {L}"):
        M.load_axis(bad, lm)
    bad = _save(tmp_path / "m.safetensors", axis, {**meta, "model": "other-model"})
    with pytest.raises(BadInputError, match="other-model.*axis_from_other_model"):
        M.load_axis(bad, lm)
    assert torch.equal(M.load_axis(bad, lm, other_model=True)[0], axis)
    bad = _save(tmp_path / "k.safetensors", axis, {"model": lm.name}, method="mean_diff")
    with pytest.raises(BadInputError, match="not an Assistant axis"):
        M.load_axis(bad, lm)
    with pytest.raises(BadInputError, match="no capping floor for layer"):
        M.reference_settings({**meta, "path": "x"}, None, (1,), True)
    with pytest.raises(BadInputError, match="calibrated at layer"):
        M.reference_settings({**meta, "path": "x"}, 2, None, True)
    with pytest.raises(BadInputError, match="no drift-monitor threshold"):
        M.reference_settings({**meta, "monitor": None, "path": "x"}, None, None, True)
    assert M.reference_settings({**meta, "monitor": None, "path": "x"}, None, None, False)[0] == meta["layer"]
    # the protocol refuses before generating anything
    monkeypatch.setattr(lm, "generate", lambda *a, **k: pytest.fail("generated before refusing"))
    with pytest.raises(BadInputError, match="axis_from_other_model"):
        persona.run(lm, _cfg(axis_from=str(tmp_path / "m.safetensors")), tmp_path / "r")
    with pytest.raises(BadInputError, match="no capping floor"):
        persona.run(lm, _cfg(axis_from=str(ref), cap_layers=(1,)), tmp_path / "r")
