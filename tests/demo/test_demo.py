"""The main job (mindscope.demo): every step on a tiny random model, resume and its guards, and
the real `mindscope demo --quick` end to end with the report rendered in headless Chromium."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mindscope.demo import STEPS, DemoConfig, run_demo

TINY = dict(n_tokens=2048, n_latents=64, k=4, train_tokens=4096, batch_size=256, ce_texts=2,
            n_explain=3, steer_prompts=2, steer_tokens=4,
            introspection=dict(n_concepts=2, n_baseline=3, layers=[0.5], strengths=[4.0],
                               max_new_tokens=3, n_sentences=1, protocols=["detection"]),
            entropy_gap=dict(n_prompts=2, max_new_tokens=4, n_boot=20),
            run_controls=())  # the controls step's own tests: tests/demo/test_demo_controls.py


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    seen = []
    res = run_demo(out, DemoConfig(**TINY), lm=tiny("llama"),
                   on_step=lambda s, r: seen.append((s, bool(r.get("skipped")))))
    return out, res, seen


def test_every_step_runs_and_writes(tiny_run):
    out, res, seen = tiny_run
    assert [s for s, _ in seen] == list(STEPS) and not any(sk for _, sk in seen)
    assert set(res) == set(STEPS)
    assert res["harvest"]["tokens"] >= 2048 - 128      # windows of 128; BOS/specials dropped
    assert res["sae"]["tokens"] == (4096 // 256) * 256
    e = res["evaluate"]
    assert 0 <= e["fvu"] < 1.5 and e["l0"] <= 4 + 1e-6 and 0 <= e["dead_fraction"] <= 1
    assert e["ce_spliced"] >= 0 and e["tokens"] > 0
    f = res["features"]
    assert len(f["explained"]) == len(f["table"]) <= 3 and f["live"] <= 64
    assert Path(f["browser_index"]).exists()
    st = res["steering"]
    assert len(st["texts"]) == 2 and st["feature"]["latent"] in f["explained"]
    for step in STEPS:
        assert json.loads((out / "steps" / f"{step}.json").read_text())["step"] == step
    html = (out / "report.html").read_text()
    for needle in ("1. Activations", "3. Evaluation", "4. Features", "5. Steering",
                   "6. Introspection", "7. On-policy", 'href="browser/feature-'):
        assert needle in html
    # every relative link in the report points at a file that exists
    import re
    for href in re.findall(r'href="([^"#:]+)"', html):
        assert (out / href).exists(), href


def _hrefs(path):
    import re

    return re.findall(r'href="([^"#:?]+)"', path.read_text())


def test_static_browser_pages_and_links(tiny_run, tmp_path):
    """The demo writes pages for the explained latents (the report's links, the clamped one),
    their neighbours and the most frequent; the index lists exactly those; every link of the
    index, the map and each page resolves. Cut to 5 top latents, the same holds."""
    import re

    from mindscope.demo._steps import browser_latents
    from mindscope.features import FeatureSet
    from mindscope.report import export_html

    out, res, _ = tiny_run
    f = res["features"]
    bdir = Path(f["browser_index"]).parent
    pages = {int(p.stem.split("-")[1]) for p in bdir.glob("feature-*.html")}
    assert len(pages) == f["browser_pages"] and set(f["explained"]) <= pages
    assert res["steering"]["feature"]["latent"] in pages
    fs = FeatureSet(f["features_dir"])
    assert sorted(pages) == browser_latents(fs, f["explained"])
    html = (out / "report.html").read_text()
    assert f'href="browser/feature-{res["steering"]["feature"]["latent"]}.html"' in html
    for d in (bdir, tmp_path / "cut"):
        if d != bdir:
            keep = browser_latents(fs, f["explained"], top=5)
            assert len(keep) < 64 and set(f["explained"]) <= set(keep)
            export_html(f["features_dir"], d, latents=keep, progress=False)
        idx = (d / "index.html").read_text()
        listed = {int(x) for x in re.findall(r'href="feature-(\d+)\.html"', idx)}
        assert listed == {int(p.stem.split("-")[1]) for p in d.glob("feature-*.html")}
        for page in [d / "index.html", d / "map.svg", *d.glob("feature-*.html")]:
            for h in _hrefs(page):
                assert (d / h).exists(), (page, h)


def test_steered_feature_is_read_back_higher(tiny_run):
    """Clamping the latent at 4x its max activation must raise its read-out on the steered
    text above the unsteered text (a tiny random model still obeys the arithmetic)."""
    st = tiny_run[1]["steering"]["feature"]
    assert st["mean_act_steered_text"] >= st["mean_act_unsteered_text"]


def test_resume_skips_done_steps_and_guards_settings(tiny_run, tiny):
    out, res, _ = tiny_run
    seen = []
    again = run_demo(out, DemoConfig(**TINY), lm=tiny("llama"),
                     on_step=lambda s, r: seen.append((s, bool(r.get("skipped")))))
    assert all(sk for _, sk in seen) and again["evaluate"]["fvu"] == res["evaluate"]["fvu"]
    with pytest.raises(ValueError, match="other settings.*n_latents"):
        run_demo(out, DemoConfig(**{**TINY, "n_latents": 128}), lm=tiny("llama"))


def test_partial_run_resumes(tiny, tmp_path):
    """Stop after two steps (as a kill between steps would), then finish: harvest and SAE are
    not redone, and the report exists at the end."""
    cfg = DemoConfig(**TINY)
    run_demo(tmp_path, cfg, lm=tiny("llama"), steps=("harvest", "sae"))
    mtime = (tmp_path / "sae" / "topk" / "sae.safetensors").stat().st_mtime_ns
    assert not (tmp_path / "steps" / "evaluate.json").exists()
    run_demo(tmp_path, cfg, lm=tiny("llama"))
    assert (tmp_path / "sae" / "topk" / "sae.safetensors").stat().st_mtime_ns == mtime
    assert (tmp_path / "report.html").exists()


def test_bad_config_and_steps(tmp_path):
    with pytest.raises(ValueError, match="n_latents"):
        DemoConfig(n_latents=0)
    with pytest.raises(ValueError, match="k .* <= n_latents"):
        DemoConfig(n_latents=8, k=16)
    with pytest.raises(ValueError, match="unknown demo step"):
        run_demo(tmp_path, DemoConfig(**TINY), steps=("harvst",))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "demo.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*--restart"):
        run_demo(tmp_path / "x", DemoConfig(**TINY), steps=())


@pytest.mark.real_model
@pytest.mark.slow
def test_cli_quick_demo_on_the_bundled_model(tmp_path):
    """`mindscope demo --quick` on SmolLM2: every step, the report, and (where Chromium is
    installed) the report rendered headless with a screenshot in test-artifacts/."""
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "mindscope", "demo", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for step in STEPS:
        assert (out / "steps" / f"{step}.json").exists(), step
    ev = json.loads((out / "steps" / "evaluate.json").read_text())
    assert 0 < ev["fvu"] < 1 and ev["ce_increase"] > 0 and 0 < ev["ce_recovered"] <= 1.0
    assert (out / "report.html").stat().st_size > 20_000
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("report rendering: /usr/bin/chromium absent (make test installs it as root)")
    sys.path.insert(0, str(Path(__file__).parents[1] / "report"))
    import _cdp
    b = _cdp.Browser(tmp_path / "profile")
    try:
        b.goto((out / "report.html").as_uri())
        assert b.js("document.querySelectorAll('section').length") >= 8
        assert b.js("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        art = Path(__file__).resolve().parents[2] / "test-artifacts"
        art.mkdir(exist_ok=True)
        b.screenshot(art / "demo_report.png")
        b.click("a[href^='browser/feature-']")
        assert b.js("document.querySelector('h1').innerText").startswith("Feature")
    finally:
        b.close()
