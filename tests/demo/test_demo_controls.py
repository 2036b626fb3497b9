"""The demo's positive-control step and report section (issue 24): a finished control is read
from its folder, a control named in run_controls runs in the demo, one that has not run is
listed with its command; the report shows each beside the real result, links resolving.

A toy protocol reads the projection of the last-token residual on a direction ``u`` orthogonal
to every untouched residual it sees (exactly 0: no effect); its control adds ``u`` (detected)."""
import json
import re
from dataclasses import make_dataclass
from pathlib import Path

import pytest
import torch

import mindscope as ms
from mindscope.demo import DemoConfig, DemoState, build_report
from mindscope.demo._steps import Context, control_command, step_controls
from mindscope.experiments import Detection, Planted, _control, _protocol, run_control
from mindscope.runs import RunDir, mean_ci
from mindscope.testing import tiny_lm

PROMPTS = ["the cat sat", "a dog ran far", "birds sing", "one two three four"]
SITE = "resid_post.1"
TINY = dict(n_tokens=2048, n_latents=64, k=4, train_tokens=4096, batch_size=256, ce_texts=2,
            n_explain=3, steer_prompts=2, steer_tokens=4, run_controls=())


ToyConfig = make_dataclass("ToyConfig", [("seed", int, 0)],
                           namespace={"quick": classmethod(lambda cls, **over: cls(**over))})


@pytest.fixture
def toy(monkeypatch):
    lm = tiny_lm("llama", seed=0)
    H = lm.capture(PROMPTS, sites=SITE, positions="last")[SITE].reshape(len(PROMPTS), -1).double()
    q, _ = torch.linalg.qr(H.T)                                   # (d, n) basis of the rows
    u = torch.randn(H.shape[1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    u = (u - q @ (q.T @ u))
    u = (u / u.norm()).float()                                     # (d,) orthogonal to them

    def run(lm_, cfg, out_dir):
        rd = RunDir(out_dir, cfg, lm_, experiment="toy")
        h = lm_.capture(PROMPTS, sites=SITE, positions="last")[SITE].reshape(len(PROMPTS), -1)
        rd.save_results({"proj": mean_ci([round(float(x @ u), 4) for x in h])})

    def detect(res):
        p = res["proj"]
        return Detection("mean projection on u", p["mean"], p["lo"], p["hi"], null=0.0, n=p["n"])

    def plant(lm_, cfg, work_dir, strength):
        return Planted.hooked(lm_, {"kind": "direction", "summary": f"Add(u x {strength})"},
                              ms.Add(SITE, u, scale=strength))

    reg = {**_protocol._REGISTRY, "toy": _protocol.ProtocolSpec("toy", run, ToyConfig, __name__, "")}
    monkeypatch.setattr(_protocol, "_REGISTRY", reg)
    monkeypatch.setattr(_protocol, "protocols", lambda: dict(reg))
    monkeypatch.setattr(_control, "protocols", lambda: dict(reg))
    monkeypatch.setattr(_control, "_CONTROLS", {"toy": _control.ControlSpec("toy", plant, detect,
                                                                             (1.0, 2.0))})
    return lm


def _ctx(out, lm, **over):
    cfg = DemoConfig(**{**TINY, **over})
    return Context(state=DemoState(out, cfg), cfg=cfg, lm=lm)


def test_a_finished_control_is_read_and_shown_beside_the_result(toy, tmp_path):
    ctrl = tmp_path / "controls"
    run_control("toy", toy, ToyConfig(), ctrl / "toy", seeds=[0, 1])
    ctx = _ctx(tmp_path / "demo", toy, controls_dir=str(ctrl))
    r = step_controls(ctx)["controls"]["toy"]
    assert r["passed"] and not r["ran_here"] and r["source"] == str(ctrl / "toy")
    assert [d["value"] for d in r["untouched"]] == [0.0, 0.0]
    assert [d["value"] for d in r["planted"]] == pytest.approx([2.0, 2.0], abs=1e-3)
    assert r["measure"] == "mean projection on u" and "PASSED" in r["markdown"]
    assert not (tmp_path / "demo" / "controls").exists()  # nothing ran in the demo
    out = tmp_path / "demo"
    html = build_report(out, {"controls": {"step": "controls", "seconds": 0.1,
                                           "controls": {"toy": r}}}, ctx.cfg, toy.name).read_text()
    assert "8. Positive controls" in html and "<b>PASSED</b> (planted detected in 2/2 seeds)" in html
    assert "<td>s0: 0 [0, 0]; s1: 0 [0, 0]</td>" in html
    assert "<td>Add(u x 2.0) x2: s0: 2 [2, 2]; s1: 2 [2, 2]</td>" in html
    assert "1 of 1 positive controls passed" in html and "data:image/png;base64" in html
    for href in re.findall(r'href="([^"#:]+)"', html):
        assert (out / href).exists(), href


def test_run_controls_runs_one_here_and_the_rest_are_listed(toy, tmp_path):
    ctx = _ctx(tmp_path / "demo", toy, controls_dir=str(tmp_path / "none"), run_controls=["toy"])
    r = step_controls(ctx)["controls"]["toy"]
    assert r["ran_here"] and r["passed"] and r["seeds"] == [0]
    assert (tmp_path / "demo" / "controls" / "toy" / "control.json").exists()
    again = step_controls(ctx)["controls"]["toy"]  # a second call reads the finished folder
    assert again["ran_here"] and again["untouched"] == r["untouched"]
    ctx = _ctx(tmp_path / "demo2", toy, controls_dir=str(tmp_path / "none"))
    r = step_controls(ctx)["controls"]["toy"]
    assert r == {"source": None, "command": control_command("toy")}
    html = build_report(tmp_path / "demo2", {"controls": {"controls": {"toy": r}}}, ctx.cfg,
                        toy.name).read_text()
    assert "not run yet" in html and "python -m mindscope.experiments.positive_control toy" in html


def test_unknown_run_controls_are_refused(toy):
    with pytest.raises(ValueError, match="\\['nope'\\] not protocols"):
        DemoConfig(run_controls=("nope",))
