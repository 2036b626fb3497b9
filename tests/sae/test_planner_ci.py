"""Confidence intervals of the power-law fits, the grid-slice laws and sweep's default lr."""
import math

import numpy as np
import pytest
import torch

from mindscope.sae import SAEConfig, TensorBatches, TrainConfig, fit_power_law, sweep
from mindscope.sae._planner import fit_laws, flops, t975


def test_slope_se_and_ci_match_ols_formulas():
    rng = np.random.default_rng(1)
    x = np.logspace(3, 6, 7)
    y = 2.0 * x ** -0.4 * np.exp(rng.normal(0, 0.05, x.size))
    f = fit_power_law(x, y)
    lx, ly = np.log(x), np.log(y)
    X = np.stack([np.ones_like(lx), lx], 1)
    beta, res, *_ = np.linalg.lstsq(X, ly, rcond=None)
    cov = res[0] / (len(x) - 2) * np.linalg.inv(X.T @ X)
    assert f["b"] == pytest.approx(beta[1], rel=1e-9)
    assert f["b_se"] == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-9)
    assert f["b_ci"] == pytest.approx([beta[1] - 2.571 * f["b_se"], beta[1] + 2.571 * f["b_se"]])
    assert "b_ci" not in fit_power_law([1, 2], [3, 4])           # 2 points: no error estimate


def test_t_table_against_scipy():
    st = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 13, 30):
        assert t975(df) == pytest.approx(st.t.ppf(0.975, df), abs=1e-3)
    assert t975(200) == 1.96


def test_ci_covers_true_exponent_about_95_percent():
    rng = np.random.default_rng(0)
    x = np.logspace(2, 5, 6)
    hits = 0
    for _ in range(400):
        y = 3.0 * x ** -0.3 * np.exp(rng.normal(0, 0.1, x.size))
        lo, hi = fit_power_law(x, y)["b_ci"]
        hits += lo <= -0.3 <= hi
    assert 0.91 < hits / 400 < 0.99


def test_slice_laws_recover_width_and_token_exponents():
    d, res = 32, []
    for n in [64, 128, 256, 512]:
        for T in [1e4, 2e4, 4e4]:
            res.append(dict(n_latents=n, tokens=T, lr=1e-3, flops=flops(d, n, T),
                            loss=0.5 * n ** -0.25 * (T / 1e4) ** -0.1))
    laws = fit_laws(res)
    assert laws["loss_vs_n_latents"]["at"] == {"tokens": 4e4}
    assert laws["loss_vs_n_latents"]["b"] == pytest.approx(-0.25, abs=1e-9)
    assert laws["loss_vs_tokens"]["at"] == {"n_latents": 512}
    assert laws["loss_vs_tokens"]["b"] == pytest.approx(-0.1, abs=1e-9)


def test_sweep_default_lr_is_resolved_and_recorded():
    x = torch.randn(1200, 8, generator=torch.Generator().manual_seed(0))
    out = sweep(TensorBatches(x[:1024], 64), [x[1024:]], SAEConfig("topk", 8, 16, k=2),
                TrainConfig(steps=1), n_latents=[16, 32], tokens=[128], lrs=[None],
                batch_size=64, progress=False)
    lrs = {r["n_latents"]: r["lr"] for r in out["results"]}
    assert lrs[16] == pytest.approx(2e-4 / math.sqrt(16 / 2 ** 14))
    assert lrs[32] == pytest.approx(lrs[16] / math.sqrt(2))
    assert set(out["saes"]) == {r["name"] for r in out["results"]}


def test_slice_laws_pick_the_largest_slice_with_three_points():
    d, res = 32, []
    for n, Ts in [(64, [1e4, 2e4, 4e4]), (128, [1e4, 2e4, 4e4]), (256, [1e4, 2e4]), (512, [1e4])]:
        for T in Ts:
            res.append(dict(n_latents=n, tokens=T, lr=1e-3, flops=flops(d, n, T),
                            loss=0.5 * n ** -0.25 * (T / 1e4) ** -0.1))
    laws = fit_laws(res)
    assert laws["loss_vs_tokens"]["at"] == {"n_latents": 128}          # 512 and 256 have < 3
    assert laws["loss_vs_tokens"]["b"] == pytest.approx(-0.1, abs=1e-9)
    assert laws["loss_vs_n_latents"]["at"] == {"tokens": 2e4}          # 4e4 has only 2 widths
    assert laws["loss_vs_n_latents"]["b"] == pytest.approx(-0.25, abs=1e-9)


def test_sweep_lr_multiples_of_the_width_default():
    x = torch.randn(1200, 8, generator=torch.Generator().manual_seed(0))
    out = sweep(TensorBatches(x[:1024], 64), [x[1024:]], SAEConfig("topk", 8, 16, k=2),
                TrainConfig(steps=1), n_latents=[16, 64], tokens=[128], lrs=["auto", "0.5x", "4x"],
                batch_size=64, progress=False)
    got = {(r["n_latents"], round(r["lr"] / (2e-4 / math.sqrt(r["n_latents"] / 2 ** 14)), 6))
           for r in out["results"]}
    assert got == {(16, 1.0), (16, 0.5), (16, 4.0), (64, 1.0), (64, 0.5), (64, 4.0)}


@pytest.mark.parametrize("bad", ["fast", "0x", "-2x", "0", "x"])
def test_sweep_rejects_bad_lr_entries(bad):
    from mindscope.sae._planner import resolve_lr
    with pytest.raises(ValueError, match="lr"):
        resolve_lr(bad, TrainConfig(steps=1), SAEConfig("topk", 8, 16, k=2))


def test_sweep_duplicate_grid_point_is_refused():
    x = torch.randn(600, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="same SAE"):
        sweep(TensorBatches(x[:512], 64), [x[512:]], SAEConfig("topk", 8, 16, k=2),
              TrainConfig(steps=1), n_latents=[16], tokens=[128], lrs=["auto", "1x"],
              batch_size=64, progress=False)
