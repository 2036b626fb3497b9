"""Matryoshka BatchTopK: nested prefix losses, config checks, save/load and export."""
import pytest
import torch

from mindscope.sae import SAE, SAEConfig, TensorBatches, TrainConfig, Trainer, load_any
from mindscope.sae import export_saelens
from mindscope.sae.archs.matryoshka import widths


def test_prefix_loss_matches_a_manual_sum():
    cfg = SAEConfig("matryoshka", 8, 32, k=4, arch_params={"widths": [4, 16, 32]})
    sae = SAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    x = torch.randn(64, 8)
    with torch.no_grad():
        t = sae.training_terms(x, x)
    z = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    zr = z.relu()
    v, i = zr.reshape(-1).topk(4 * 64)
    f = torch.zeros_like(zr).reshape(-1).scatter(0, i, v).reshape_as(zr)
    mse = lambda w: (x - (f[:, :w] @ sae.W_dec[:w] + sae.b_dec)).pow(2).sum(-1).mean()
    assert float(t["mse"]) == pytest.approx(float(mse(32)), rel=1e-5)
    assert float(t["extra"]) == pytest.approx(float(mse(4) + mse(16)), rel=1e-5)
    assert float(t["loss"]) == pytest.approx(float(mse(4) + mse(16) + mse(32)), rel=1e-5)


def test_widths_default_and_validation():
    assert widths(SAEConfig("matryoshka", 8, 64, k=4)) == [4, 8, 16, 32, 64]
    with pytest.raises(ValueError, match="ending at n_latents"):
        SAEConfig("matryoshka", 8, 64, k=4, arch_params={"widths": [8, 32]})
    with pytest.raises(ValueError, match="increasing"):
        SAEConfig("matryoshka", 8, 64, k=4, arch_params={"widths": [32, 8, 64]})
    with pytest.raises(ValueError, match="unknown key"):
        SAEConfig("matryoshka", 8, 64, k=4, arch_params={"groups": 3})


def test_trains_saves_loads_and_exports(tmp_path):
    x = torch.randn(4096, 8)
    cfg = SAEConfig("matryoshka", 8, 32, k=4, arch_params={"widths": [8, 32]})
    tr = Trainer([(cfg, TrainConfig(steps=30, lr=1e-3))], progress=False, out_dir=tmp_path / "run")
    [sae] = tr.fit(TensorBatches(x, 256, seed=0))
    assert float(sae.threshold.min()) > 0                          # running threshold learned
    back = load_any(sae.save(tmp_path / "m"))
    assert back.cfg.arch_params == {"widths": [8, 32]}
    assert torch.equal(back.encode(x[:9]), sae.encode(x[:9]))
    lens = load_any(export_saelens(sae, tmp_path / "lens"))
    assert lens.cfg.arch == "jumprelu"
    assert torch.allclose(lens(x[:9]), sae(x[:9]), atol=1e-5)
