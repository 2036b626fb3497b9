"""model_metrics over a dict of SAEs equals one call per SAE (clean/zero runs shared)."""
import pytest
import torch

from mindscope.sae import SAE, SAEConfig, model_metrics


def test_model_metrics_dict_matches_single_calls(tiny):
    lm = tiny("llama")
    texts = ["the cat sat on the mat", "a b c d e f g", "hello world again and again"]
    site = "resid_post.1"
    h = lm.capture(texts, sites=[site])[site]
    d = h.shape[1]
    saes = {}
    for seed, n in [(0, 8), (1, 16)]:
        g = torch.Generator().manual_seed(seed)
        s = SAE(SAEConfig("topk", d, n, k=2, site=site))
        with torch.no_grad():
            s.W_enc.copy_(torch.randn(n, d, generator=g)); s.W_dec.copy_(torch.randn(n, d, generator=g))
            s.b_dec.copy_(h.mean(0))
        saes[f"n{n}"] = s
    many = model_metrics(lm, saes, texts, batch_size=2)
    assert set(many) == {"n8", "n16"}
    for k, s in saes.items():
        one = model_metrics(lm, s, texts, batch_size=2)
        for key in ("ce_clean", "ce_spliced", "ce_zero_ablation", "ce_increase", "kl", "ce_recovered"):
            assert many[k][key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), (k, key)
    assert many["n8"]["ce_spliced"] != pytest.approx(many["n16"]["ce_spliced"], rel=1e-6)
    with pytest.raises(ValueError, match="different sites"):
        model_metrics(lm, {"a": saes["n8"], "b": SAE(SAEConfig("topk", d, 8, k=2, site="resid_post.0"))},
                      texts)
