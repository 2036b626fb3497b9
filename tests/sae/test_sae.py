"""SAE module semantics (against manual math) and the folder formats (round trips)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from mindscope.sae import (SAE, SAEConfig, export_saelens, export_sparsify, import_saelens,
                           import_sparsify, load_any)


def _random_sae(arch, d=6, n=20, k=3, scale=1.7, **kw):
    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(arch, d, n, k=k, scale_in=scale, scale_out=scale, site="resid_post.1",
                        model="tiny", **kw))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.full((n,), 0.2).log())
        if arch == "batchtopk":
            sae.threshold.fill_(0.3)
    return sae


def _manual(sae, x):
    c = sae.cfg
    xs = x * c.scale_in - (sae.b_dec if c.b_dec_in else 0)
    z = xs @ sae.W_enc.T + sae.b_enc
    if c.arch == "relu":
        f = z.clamp_min(0)
    elif c.arch == "topk":
        thr = z.topk(c.k, dim=-1).values[:, -1:]
        f = torch.where(z >= thr, z, torch.zeros_like(z)).clamp_min(0)
    else:
        th = sae.threshold_vec
        f = torch.where(z > th, z, torch.zeros_like(z))
    return f, (f @ sae.W_dec + sae.b_dec) / c.scale_out


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_encode_decode_match_manual_math(arch):
    sae = _random_sae(arch)
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(1))
    f_ref, y_ref = _manual(sae, x)
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), f_ref, atol=1e-6)
        assert torch.allclose(sae(x), y_ref, atol=1e-5)
        assert torch.allclose(sae.decode(sae.encode(x)), y_ref, atol=1e-5)
        if arch == "topk":
            v, i = sae.encode_sparse(x.view(3, 3, 6))
            assert v.shape == (3, 3, 3)
            assert torch.allclose(sae.decode_sparse(v, i).view(9, 6), y_ref, atol=1e-5)


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_own_format_round_trip_is_exact(tmp_path, arch):
    sae = _random_sae(arch)
    sae.save(tmp_path / "s")
    back = SAE.load(tmp_path / "s")
    assert back.cfg == sae.cfg
    for k, v in sae.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert json.loads((tmp_path / "s" / "cfg.json").read_text())["site"] == "resid_post.1"
    assert load_any(tmp_path / "s").cfg == sae.cfg


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_saelens_export_layout_and_round_trip(tmp_path, arch):
    sae = _random_sae(arch)
    export_saelens(sae, tmp_path / "sl")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    w = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    assert w["W_enc"].shape == (6, 20) and w["W_dec"].shape == (20, 6)
    assert w["b_enc"].shape == (20,) and w["b_dec"].shape == (6,)
    assert cfg["d_in"] == 6 and cfg["d_sae"] == 20 and cfg["normalize_activations"] == "none"
    x = torch.randn(11, 6, generator=torch.Generator().manual_seed(2))
    # the SAELens forward, written out from its documented semantics, on raw inputs
    sae_in = x - w["b_dec"] * cfg["apply_b_dec_to_input"]
    hidden = sae_in @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "standard":
        f = hidden.relu()
    elif cfg["architecture"] == "topk":
        tk = hidden.topk(cfg["k"], dim=-1)
        f = torch.zeros_like(hidden).scatter(-1, tk.indices, tk.values.relu())
    else:
        f = hidden.relu() * (hidden > w["threshold"])
    y_saelens = f @ w["W_dec"] + w["b_dec"]
    with torch.no_grad():
        assert torch.allclose(y_saelens, sae(x), atol=1e-5)
        back = import_saelens(tmp_path / "sl")
        assert torch.allclose(back(x), sae(x), atol=1e-5)
        assert torch.allclose(load_any(tmp_path / "sl")(x), sae(x), atol=1e-5)


def test_sparsify_import_and_round_trip(tmp_path):
    sae = _random_sae("topk")
    export_sparsify(sae, tmp_path / "sp")
    w = load_file(str(tmp_path / "sp" / "sae.safetensors"))
    assert set(w) == {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}
    x = torch.randn(7, 6)
    # sparsify's encode: topk(relu((x - b_dec) W^T + b)); decode: sum acts * W_dec + b_dec
    pre = ((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]).relu()
    v, i = pre.topk(3, dim=-1)
    y = torch.zeros(7, 20).scatter(1, i, v) @ w["W_dec"] + w["b_dec"]
    with torch.no_grad():
        back = import_sparsify(tmp_path / "sp")
        assert torch.allclose(back(x), y, atol=1e-5)
        assert torch.allclose(load_any(tmp_path / "sp")(x), sae(x), atol=1e-5)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="arch"):
        SAEConfig("gated", 4, 8)
    with pytest.raises(ValueError, match="k=9"):
        SAEConfig("topk", 4, 8, k=9)
    with pytest.raises(ValueError, match="transcoder"):
        SAEConfig("topk", 4, 8, k=2, out_site="mlp_out.1", apply_b_dec_to_input=True)
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        SAE.load("/nonexistent/dir")


def test_load_checks_files_like_load_ours(tmp_path):
    from safetensors.torch import save_file

    from mindscope.core import BadInputError

    sae = _random_sae("jumprelu")
    sae.save(tmp_path / "s")
    assert SAE.load(tmp_path / "s", device="cpu").cfg == sae.cfg
    with pytest.raises(FileNotFoundError, match="load_any"):  # SAE.load's own hint is kept
        SAE.load(tmp_path)
    w = load_file(str(tmp_path / "s" / "sae.safetensors"))
    w["mindscope_sae.W_dec"][0, 0] = float("nan")
    save_file(w, str(tmp_path / "s" / "sae.safetensors"))
    with pytest.raises(BadInputError, match="NaN"):  # load_ours' checks now apply here too
        SAE.load(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({**cfg, "format": "other"}))
    with pytest.raises(ValueError, match="mindscope-sae"):
        SAE.load(tmp_path / "s")
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({**cfg, "n_latents": 1 << 40}))
    with pytest.raises(BadInputError, match="n_latents"):  # refused before allocating
        SAE.load(tmp_path / "s")


def test_saved_names_cannot_be_misread_by_bare_key_loaders_and_old_files_load(tmp_path):
    """circuit-tracer's ReLU transcoder loader reads bare W_enc/W_dec/b_enc/b_dec and would
    silently drop TopK, the scales and the decoder bias; our files use prefixed names, and
    files written before the rename (bare names) still load."""
    from safetensors.torch import save_file

    sae = _random_sae("topk")
    sae.save(tmp_path / "new")
    w = load_file(str(tmp_path / "new" / "sae.safetensors"))
    assert not {"W_enc", "W_dec", "b_enc", "b_dec"} & set(w)
    assert all(k.startswith("mindscope_sae.") for k in w)
    sae.save(tmp_path / "old")
    save_file({k.split(".", 1)[1]: v for k, v in w.items()},
              str(tmp_path / "old" / "sae.safetensors"))
    for d in ("new", "old"):
        again = SAE.load(tmp_path / d)
        x = torch.randn(4, sae.cfg.d_in)
        assert torch.equal(again(x), sae(x))
