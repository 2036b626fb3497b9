"""mlp_in / mlp_post (neurons) against a manual MLP computation, read and written."""
import pytest
import torch

import mindscope as ms

TEXTS = ["The quick brown fox jumps", "Alice met Bob in the garden today", "def"]
# family -> (norm before the MLP, input site of that norm, manual neurons from mlp_in)
ACT = torch.nn.functional


def _neurons(lm, L, x):
    mlp = lm.block_part(L, lm.family_spec.mlp)
    if lm.family == "gpt2":
        return mlp.act(mlp.c_fc(x))
    if lm.family == "gpt_neox":
        return mlp.act(mlp.dense_h_to_4h(x))
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


NORM = {"llama": ("post_attention_layernorm", "resid_mid"), "qwen3": ("post_attention_layernorm",
        "resid_mid"), "gemma3": ("pre_feedforward_layernorm", "resid_mid"),
        "gpt2": ("ln_2", "resid_mid"), "gpt_neox": ("post_attention_layernorm", "resid_pre")}


@pytest.mark.parametrize("family", list(NORM))
def test_mlp_in_and_neurons_equal_manual_mlp(tiny, family):
    lm, L = tiny(family), 1
    norm, src = NORM[family]
    cap = lm.capture(TEXTS, [f"{src}.{L}", f"mlp_in.{L}", f"mlp_post.{L}", f"mlp_out.{L}"],
                     stop_early=False)
    x = cap[f"mlp_in.{L}"]
    torch.testing.assert_close(x, lm.block_part(L, norm)(cap[f"{src}.{L}"]), atol=1e-5, rtol=1e-5)
    post = cap[f"mlp_post.{L}"]
    assert post.shape == (x.shape[0], lm.model.config.intermediate_size
                          if family != "gpt2" else 4 * lm.d_model)
    torch.testing.assert_close(post, _neurons(lm, L, x), atol=1e-5, rtol=1e-5)
    if lm.family_spec.heads_additive:  # no norm after the down projection
        down = lm.block_part(L, lm.family_spec.mlp_down)
        torch.testing.assert_close(cap[f"mlp_out.{L}"], down(post), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_neuron_ablation_and_mlp_in_edit_change_the_model_as_manual(tiny, family):
    lm, L, j = tiny(family), 2, 5
    ref = lm.capture(TEXTS, [f"mlp_post.{L}", f"mlp_in.{L}"], stop_early=False)
    kill = ms.Replace(f"mlp_post.{L}", lambda h: h.index_fill(-1, torch.tensor([j]), 0.0))
    with lm.intervene(kill):
        got = lm.capture(TEXTS, [f"mlp_post.{L}", f"mlp_out.{L}"], stop_early=False)
    want = ref[f"mlp_post.{L}"].clone()
    want[:, j] = 0
    torch.testing.assert_close(got[f"mlp_post.{L}"], want)
    mlp = lm.block_part(L, lm.family_spec.mlp)
    torch.testing.assert_close(got[f"mlp_out.{L}"], _post_mlp(lm, L, mlp, want), atol=1e-5,
                               rtol=1e-5)
    v = torch.randn(lm.d_model)
    with lm.intervene(ms.Add(f"mlp_in.{L}", v, scale=2.0)):
        got = lm.capture(TEXTS, [f"mlp_post.{L}"], stop_early=False)
    torch.testing.assert_close(got[f"mlp_post.{L}"], _neurons(lm, L, ref[f"mlp_in.{L}"] + 2 * v),
                               atol=1e-5, rtol=1e-5)


def _post_mlp(lm, L, mlp, neurons):
    out = lm.block_part(L, lm.family_spec.mlp_down)(neurons)
    if not lm.family_spec.heads_additive:  # Gemma: the post-feedforward norm
        out = lm.block_part(L, lm.family_spec.mlp_out)(out)
    return out


def test_mlp_post_rejected_on_moe_and_bad_kinds(tiny):
    lm = tiny("llama")
    with pytest.raises(ValueError, match="not a mixture-of-experts"):
        lm.site("router.0")
    with pytest.raises(ValueError, match="unknown site 'mlp_post.9'"):
        lm.site("mlp_post.9")
