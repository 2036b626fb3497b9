import json
import math

import pytest
import torch

from mindscope import runs as C


def test_wilson_matches_hand_computation():
    # Wilson 95% for 3/10: centre (0.3 + 1.96²/20)/(1 + 1.96²/10), by hand
    z, k, n = 1.96, 3, 10
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    w = C.wilson(3, 10)
    assert w["rate"] == 0.3 and w["k"] == 3 and w["n"] == 10
    assert w["lo"] == pytest.approx(centre - half) and w["hi"] == pytest.approx(centre + half)
    assert w["lo"] == pytest.approx(0.1078, abs=1e-4) and w["hi"] == pytest.approx(0.6032, abs=1e-4)


def test_wilson_edges():
    assert C.wilson(0, 20)["lo"] == 0.0 and 0 < C.wilson(0, 20)["hi"] < 0.2
    assert C.wilson(5, 5)["hi"] == 1.0 and C.wilson(5, 5)["lo"] > 0.5
    assert C.wilson(0, 0)["rate"] is None
    with pytest.raises(ValueError):
        C.wilson(3, 2)


def test_mean_ci():
    r = C.mean_ci([1.0, 2.0, 3.0])
    sd = 1.0  # sample sd of 1, 2, 3
    assert r["mean"] == 2.0 and r["hi"] - 2.0 == pytest.approx(1.96 * sd / math.sqrt(3))
    assert C.mean_ci([])["mean"] is None


@pytest.mark.parametrize("xs,level", [([0.61, 0.70, 0.66], 0.95), ([1.0, 2.0], 0.95),
                                      ([3.1, 2.7, 3.3, 2.9, 3.6, 3.0, 2.8], 0.90)])
def test_t_ci_equals_scipy_student_t(xs, level):
    import numpy as np
    from scipy import stats
    r = C.t_ci(xs, level)
    lo, hi = stats.t.interval(level, len(xs) - 1, loc=np.mean(xs), scale=stats.sem(xs))
    assert r["n"] == len(xs) and math.isclose(r["mean"], float(np.mean(xs)), rel_tol=1e-12)
    assert math.isclose(r["lo"], lo, rel_tol=1e-9) and math.isclose(r["hi"], hi, rel_tol=1e-9)
    # wider than the normal interval for few samples (t_{0.975,2} = 4.303 vs z = 1.96)
    z = C.mean_ci(xs, z=stats.norm.ppf((1 + level) / 2))  # the same level, normal
    assert r["hi"] - r["lo"] > z["hi"] - z["lo"]


def test_t_ci_covers_the_mean_at_its_level_where_the_normal_interval_does_not():
    import numpy as np
    rng = np.random.default_rng(0)  # fixed draws: deterministic
    draws = rng.normal(5.0, 2.0, size=(4000, 3))
    t_cov = np.mean([(lambda r: r["lo"] <= 5.0 <= r["hi"])(C.t_ci(d)) for d in draws])
    z_cov = np.mean([(lambda r: r["lo"] <= 5.0 <= r["hi"])(C.mean_ci(d)) for d in draws])
    assert abs(t_cov - 0.95) < 0.015 and z_cov < 0.85  # normal z with n = 3 covers ~81 %


def test_t_ci_edges():
    assert C.t_ci([])["mean"] is None
    one = C.t_ci([2.0, float("nan")])
    assert one["n"] == 1 and one["mean"] == 2.0 and one["lo"] is None
    with pytest.raises(ValueError, match="level"):
        C.t_ci([1.0, 2.0], level=95)


def test_write_json_atomic_and_jsonable(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class S:
        a: tuple = (1, 2)
        t: torch.Tensor = None

    p = C.write_json(tmp_path / "x" / "r.json", {"s": S(t=torch.tensor([1.5])), "nan": float("nan")})
    d = json.loads(p.read_text())
    assert d == {"s": {"a": [1, 2], "t": [1.5]}, "nan": None}
    assert [f.name for f in p.parent.iterdir()] == ["r.json"]  # no temp files left


def test_run_dir_and_model_hash(tmp_path, tiny):
    from mindscope.testing import tiny_lm

    lm = tiny("llama")
    rd = C.RunDir(tmp_path / "run", {"x": 1}, lm, experiment="demo")
    cfg = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert cfg["settings"] == {"x": 1} and cfg["experiment"] == "demo"
    assert cfg["model"]["n_layers"] == 4 and len(cfg["model"]["hash"]) == 16
    assert cfg["versions"]["torch"] == torch.__version__
    assert C.model_hash(lm) == cfg["model"]["hash"]
    assert C.model_hash(tiny_lm("llama", seed=1)) != cfg["model"]["hash"]
    rd.save_results({"m": 1})
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == {
        "m": 1, "chat_format": "chat template"}  # how chat prompts were rendered (issue 24)
    assert cfg["chat_format"] == "chat template"


def test_report_html_escapes_and_embeds(tmp_path):
    r = C.Page("T <x>")
    r.table([{"a": C.wilson(1, 2), "b": "<b>"}])
    r.image(C.heatmap_png([[0.1, None], [0.5, 1.0]], [1, 2], [4, 8], "h"))
    r.transcript("t", "prompt <p>", "resp")
    h = r.html()
    assert "T &lt;x&gt;" in h and "&lt;b&gt;" in h and "<b>" not in h.split("<body>")[1]
    assert "data:image/png;base64," in h and "0.50 [" in h
