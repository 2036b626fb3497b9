"""The positive-control runner: plant, run unchanged, detect; resume; clear errors.

A toy protocol measures the projection of the last-token residual on a direction ``u`` chosen
orthogonal to every untouched residual it will see, so the untouched model gives exactly 0
(no effect) and a planted ``Add(u * s)`` gives s: the runner must call the first a null and the
second a detection, and the control passes only when both hold.
"""
import json
from dataclasses import dataclass

import pytest
import torch

import mindscope as ms
from mindscope.core import BadInputError
from mindscope.experiments import Detection, Planted, _control, _protocol, run_control
from mindscope.runs import RunDir, mean_ci
from mindscope.testing import tiny_lm

PROMPTS = ["the cat sat", "a dog ran far", "birds sing", "one two three four"]
SITE = "resid_post.1"


@dataclass
class ToyConfig:
    seed: int = 0
    """Seed (recorded only)."""

    @classmethod
    def quick(cls, **over):
        return cls(**over)


@dataclass
class ToyResult:
    results: dict

    def summary_rows(self):
        return [{"metric": "proj", "value": self.results["proj"]}]

    def report(self):
        return None


def _direction(lm):
    cap = lm.capture(PROMPTS, sites=SITE, positions="last")
    H = cap[SITE].reshape(len(PROMPTS), -1).double()            # (n, d)
    q, _ = torch.linalg.qr(H.T)                                   # (d, n) basis of the rows
    g = torch.Generator().manual_seed(3)
    u = torch.randn(H.shape[1], generator=g, dtype=torch.float64)
    u = u - q @ (q.T @ u)
    return (u / u.norm()).float()


@pytest.fixture
def toy(monkeypatch):
    lm = tiny_lm("llama", seed=0)
    u = _direction(lm)
    calls = []

    def run(lm_, cfg, out_dir):
        calls.append(str(out_dir))
        rd = RunDir(out_dir, cfg, lm_, experiment="toy")
        cap = lm_.capture(PROMPTS, sites=SITE, positions="last")
        proj = [round(float(h @ u), 4) for h in cap[SITE].reshape(len(PROMPTS), -1)]
        rd.save_results({"proj": mean_ci(proj)})
        return ToyResult({"proj": mean_ci(proj)})

    def detect(res):
        p = res["proj"]
        return Detection("mean projection on u", p["mean"], p["lo"], p["hi"], null=0.0,
                         n=p["n"])

    def plant(lm_, cfg, work_dir, strength):
        return Planted.hooked(lm_, {"kind": "additive direction", "summary": f"Add(u x {strength})",
                                    "strength": strength}, ms.Add(SITE, u, scale=strength))

    spec = _protocol.ProtocolSpec("toy", run, ToyConfig, __name__, "A toy.")
    monkeypatch.setitem(_protocol._REGISTRY, "toy", spec)
    monkeypatch.setattr(_protocol, "protocols", lambda: {**_protocol._REGISTRY})
    monkeypatch.setattr(_control, "protocols", lambda: {**_protocol._REGISTRY})
    monkeypatch.setitem(_control._CONTROLS, "toy",
                        _control.ControlSpec("toy", plant, detect, (0.5, 2.0)))
    return lm, u, calls


def test_control_detects_the_planted_effect_and_not_the_untouched(toy, tmp_path):
    lm, u, calls = toy
    res = run_control("toy", lm, ToyConfig(), tmp_path / "c", seeds=[0, 1])
    r = res.results
    assert res.passed and r["planted_detected"] and not r["untouched_detected"]
    assert [d["value"] for d in r["untouched"]] == [0.0, 0.0]
    assert r["planted"]["2"][0]["value"] == pytest.approx(2.0, abs=1e-3)
    assert r["planted"]["0.5"][0]["value"] == pytest.approx(0.5, abs=1e-3)
    assert r["mde_strength"] == 0.5
    assert len(calls) == 6  # (untouched + 2 strengths) x 2 seeds
    # the hook is gone after the control: the untouched projection is back to 0
    cap = lm.capture(PROMPTS, sites=SITE, positions="last")
    assert float((cap[SITE].reshape(len(PROMPTS), -1) @ u).abs().max()) < 1e-4
    saved = json.loads((tmp_path / "c" / "control.json").read_text())
    assert saved["passed"] is True
    md = (tmp_path / "c" / "control.md").read_text()
    assert "PASSED" in md and "untouched model" in md
    assert (tmp_path / "c" / "control.png").stat().st_size > 1000
    assert "control passed" in repr(res) or "toy control" in repr(res)


def test_control_resumes_from_finished_runs(toy, tmp_path):
    lm, u, calls = toy
    run_control("toy", lm, ToyConfig(), tmp_path / "c", strengths=[1.0])
    assert len(calls) == 2
    (tmp_path / "c" / "control.json").unlink()
    res = run_control("toy", lm, ToyConfig(), tmp_path / "c", strengths=[1.0])
    assert len(calls) == 2 and res.passed  # both runs reused


def test_a_control_that_plants_nothing_fails(toy, tmp_path, monkeypatch):
    lm, u, calls = toy
    spec = _control._CONTROLS["toy"]
    monkeypatch.setitem(_control._CONTROLS, "toy", _control.ControlSpec(
        "toy", lambda lm_, cfg, d, s: Planted(lm_, {"kind": "nothing"}), spec.detect, (1.0,)))
    res = run_control("toy", lm, ToyConfig(), tmp_path / "c")
    assert not res.passed and "FAILED" in (tmp_path / "c" / "control.md").read_text()


def test_clear_errors(toy, tmp_path, monkeypatch):
    lm, _, _ = toy
    monkeypatch.delitem(_control._CONTROLS, "toy")
    with pytest.raises(BadInputError, match="no registered positive control"):
        run_control("toy", lm, ToyConfig(), tmp_path / "c")
    with pytest.raises(BadInputError, match="no protocol 'nope'"):
        run_control("nope", lm, ToyConfig(), tmp_path / "c")
    with pytest.raises(ValueError, match="positive"):
        _control.control("x", detect=lambda r: None, strengths=(0.0,))


def test_detection_direction_counts_only_the_predicted_side():
    from mindscope.experiments import Detection

    below, above = (-1.0, -2.0, -0.5), (1.0, 0.5, 2.0)
    assert Detection("m", *below).detected and Detection("m", *above).detected  # two-sided
    assert Detection("m", *below, direction=-1).detected
    assert not Detection("m", *above, direction=-1).detected
    assert Detection("m", *above, direction=1).detected
    assert not Detection("m", -0.1, -0.5, 0.3, direction=-1).detected  # straddles the null
    assert Detection("m", *below, direction=-1).to_dict()["direction"] == -1


def test_compute_minutes_count_every_run_as_made_and_name_the_untimed(toy, tmp_path):
    """A resumed control's "minutes" cover only its own call; compute_minutes add up the wall
    seconds each run recorded when it was made, and runs without a record are named."""
    lm, _, _ = toy
    r = run_control("toy", lm, ToyConfig(), tmp_path / "c", seeds=[0, 1]).results
    times = sorted((tmp_path / "c").rglob("timing.json"))
    assert len(times) == 6 and r["untimed"] == []  # 2 untouched + 2 x 2 planted; hooks: no model dir
    total = sum(json.loads(t.read_text())["seconds"] for t in times)
    assert r["compute_minutes"] == pytest.approx(total / 60, abs=0.01)
    (tmp_path / "c" / "untouched" / "seed1" / "timing.json").unlink()
    r2 = run_control("toy", lm, ToyConfig(), tmp_path / "c", seeds=[0, 1]).results
    assert r2["untimed"] == ["untouched/seed1"]
    assert not (tmp_path / "c" / "untouched" / "seed1" / "timing.json").exists()  # reused, not rerun
