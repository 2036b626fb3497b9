"""SAELens / sparsify file-format fixes, tested on the files' formats (the real packages are
checked by benchmarks/peers/interop_check.py in the peer venvs; numbers in docs/sae.md)."""
import json

import pytest
import torch
from safetensors.torch import save_file

from mindscope.core import BadInputError
from mindscope.sae import SAE, SAEConfig, export_saelens, export_sparsify, load_any
from mindscope.sae._interop import hook_from_site, site_from_hook


def _lens_folder(path, cfg, tensors):
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "sae_weights.safetensors"))
    return path


def _topk_lens(tmp_path, rescale, extra=None, d=8, n=32, k=4):
    g = torch.Generator().manual_seed(0)
    t = {"W_enc": torch.randn(d, n, generator=g), "b_enc": torch.randn(n, generator=g) * 0.1,
         "W_dec": torch.randn(n, d, generator=g) * (torch.rand(n, 1, generator=g) * 3 + 0.2),
         "b_dec": torch.randn(d, generator=g)}
    cfg = {"architecture": "topk", "d_in": d, "d_sae": n, "k": k, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": "none", "rescale_acts_by_decoder_norm": rescale,
           "metadata": {"sae_lens_version": "6.54.12", "model_name": "toy",
                        "hook_name": "blocks.2.hook_resid_post"}, **(extra or {})}
    return _lens_folder(tmp_path / f"lens{int(rescale)}", cfg, t), t


@pytest.mark.parametrize("rescale", [False, True])
def test_saelens_topk_rescale_by_decoder_norm_matches_its_formula(tmp_path, rescale):
    """sae_lens TopKSAE: h = ((x - b_dec) W_enc + b_enc) * |W_dec_i| if rescale; f = relu(topk(h));
    x_hat = (f / |W_dec_i| if rescale) W_dec + b_dec. Imported codes and reconstructions match."""
    path, t = _topk_lens(tmp_path, rescale)
    sae = load_any(path)
    x = torch.randn(64, 8)
    nrm = t["W_dec"].norm(dim=1) if rescale else torch.ones(32)
    h = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * nrm
    v, i = h.topk(4, dim=-1)
    f = torch.zeros_like(h).scatter(-1, i, v.relu())
    x_hat = (f / nrm) @ t["W_dec"] + t["b_dec"]
    assert torch.allclose(sae.encode(x), f, atol=1e-5)
    assert torch.equal(sae.encode(x) != 0, f != 0)
    assert torch.allclose(sae(x), x_hat, atol=1e-5)
    assert sae.cfg.site == "resid_post.2" and sae.cfg.model == "toy"


def test_saelens_unknown_keys_are_refused_not_dropped(tmp_path):
    path, _ = _topk_lens(tmp_path, False, {"use_fancy_norm": True})
    with pytest.raises(BadInputError, match="unknown SAELens config key.*use_fancy_norm"):
        load_any(path)
    # a pre-6 config may carry its training-runner fields (they do not change inference)
    path, _ = _topk_lens(tmp_path / "old", False, {"l1_coefficient": 5.0, "hook_point_layer": 2})
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["metadata"].pop("sae_lens_version")
    (path / "cfg.json").write_text(json.dumps(cfg))
    assert load_any(path).cfg.k == 4
    # ... but in a 6.x config those are unknown
    path, _ = _topk_lens(tmp_path / "new", False, {"l1_coefficient": 5.0})
    with pytest.raises(BadInputError, match="l1_coefficient"):
        load_any(path)


def test_saelens_per_head_and_rescale_on_other_archs_are_refused(tmp_path):
    path, _ = _topk_lens(tmp_path, False, {"reshape_activations": "hook_z"})
    with pytest.raises(BadInputError, match="per-head"):
        load_any(path)


def _trained_like(arch="topk", scale=1.7):
    sae = SAE(SAEConfig(arch, 8, 32, k=4, scale_in=scale, scale_out=scale, model="toy",
                        site="resid_post.5"))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
    return sae


def test_saelens_export_is_a_6x_config_with_tl_hook_name(tmp_path):
    sae = _trained_like()
    cfg = json.loads((export_saelens(sae, tmp_path / "e") / "cfg.json").read_text())
    assert cfg["metadata"]["sae_lens_version"].split(".")[0] == "6"
    assert cfg["metadata"]["hook_name"] == "blocks.5.hook_resid_post"
    assert cfg["metadata"]["hf_hook_name"] == "model.layers.5"
    assert cfg["rescale_acts_by_decoder_norm"] is False
    back = load_any(tmp_path / "e")
    assert back.cfg.site == "resid_post.5" and back.cfg.model == "toy"
    x = torch.randn(16, 8)
    assert torch.allclose(back(x), sae(x), atol=1e-5)


def test_sparsify_export_has_unit_decoder_rows_when_it_says_normalize_decoder(tmp_path):
    sae = _trained_like(scale=7.3)
    p = export_sparsify(sae, tmp_path / "s")
    cfg = json.loads((p / "cfg.json").read_text())
    from safetensors.torch import load_file
    w = load_file(str(p / "sae.safetensors"))
    assert cfg["normalize_decoder"] is True
    assert torch.allclose(w["W_dec"].norm(dim=1), torch.ones(32), atol=1e-5)
    # sparsify's own function: topk(relu((x - b_dec) W^T + b)) W_dec + b_dec
    x = torch.randn(16, 8) * 3
    z = ((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]).relu()
    v, i = z.topk(4, dim=-1)
    rec = torch.zeros_like(z).scatter(-1, i, v) @ w["W_dec"] + w["b_dec"]
    assert torch.allclose(rec, sae(x), atol=1e-4)
    assert torch.equal(torch.zeros_like(z).scatter(-1, i, v) != 0, sae.encode(x) != 0)
    # decoder rows of different norms cannot be folded without changing the top-k: written as is
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2, 32)[:, None])
    cfg = json.loads((export_sparsify(sae, tmp_path / "s2") / "cfg.json").read_text())
    assert cfg["normalize_decoder"] is False
    assert torch.allclose(load_any(tmp_path / "s2")(x), sae(x), atol=1e-4)


def test_sparsify_folder_named_by_hookpoint_gets_a_site(tmp_path):
    sae = _trained_like()
    export_sparsify(sae, tmp_path / "layers.7")
    assert load_any(tmp_path / "layers.7").cfg.site == "resid_post.7"


@pytest.mark.parametrize("name,site", [
    ("blocks.12.hook_resid_post", "resid_post.12"), ("blocks.0.hook_resid_pre", "resid_pre.0"),
    ("blocks.3.hook_mlp_out", "mlp_out.3"), ("blocks.3.hook_attn_out", "attn_out.3"),
    ("model.layers.12", "resid_post.12"), ("layers.4", "resid_post.4"),
    ("model.layers.2.mlp", "mlp_out.2"), ("resid_post.1", "resid_post.1"),
    ("blocks.3.attn.hook_z", "blocks.3.attn.hook_z")])
def test_hook_names_translate_to_sites(name, site):
    assert site_from_hook(name) == site
    hook, _ = hook_from_site(site)
    if hook != site:
        assert site_from_hook(hook) == site
