"""Every family of the table (and two discovered ones) against HF: hidden states, attention
patterns, site algebra; MoE experts weighted by the router sum to mlp_out."""
import logging

import pytest
import torch
import transformers as tf

import mindscope as ms
from mindscope.core import FAMILIES
from mindscope.testing import TINY_FAMILIES, tiny_lm, tiny_tokenizer, tiny_vlm

TEXTS = ["The quick brown fox jumps", "Alice met Bob in the garden", "def"]
NEW = ["phi3", "mixtral", "qwen2_moe", "qwen3_moe", "granite", "smollm3", "olmo2", "gemma"]
MOE = ["mixtral", "qwen2_moe", "qwen3_moe"]


def test_every_table_family_has_a_tiny_model():
    vl = {"gemma3", "gemma3_text", "qwen2_vl", "qwen2_5_vl"}  # built by tiny_vlm / below
    assert set(FAMILIES) - vl <= set(TINY_FAMILIES) | set(NEW)


def _check_against_hf(lm, texts=TEXTS, L=1):
    sites = ["embed", f"resid_pre.{L}", f"attn_out.{L}", f"mlp_out.{L}", f"resid_post.{L}",
             f"attn_pattern.{L}", "final_norm"] + ([] if lm.parallel else [f"resid_mid.{L}"])
    cap = lm.capture(texts, sites, stop_early=False)
    for r, text in enumerate(texts):
        b = lm.tokenize([text])
        out = lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                       output_hidden_states=True, output_attentions=True)
        hs = out.hidden_states
        rows = cap.row == r
        T = hs[0].shape[1]
        torch.testing.assert_close(cap["embed"][rows], hs[0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cap[f"resid_post.{L}"][rows], hs[L + 1][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(cap["final_norm"][rows], hs[-1][0], atol=1e-4, rtol=1e-4)
        pat = cap[f"attn_pattern.{L}"][rows][:, :, :T].transpose(0, 1)
        torch.testing.assert_close(pat, out.attentions[L][0], atol=1e-5, rtol=1e-5)
    mid = (cap[f"resid_pre.{L}"] + cap[f"attn_out.{L}"]) if lm.parallel else cap[f"resid_mid.{L}"]
    if not lm.parallel:
        torch.testing.assert_close(cap[f"resid_pre.{L}"] + cap[f"attn_out.{L}"], mid,
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mid + cap[f"mlp_out.{L}"], cap[f"resid_post.{L}"],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", NEW)
def test_new_families_equal_hf(tiny, family):
    _check_against_hf(tiny(family))


@pytest.mark.parametrize("family", MOE)
def test_moe_experts_weighted_by_router_sum_to_mlp_out(tiny, family):
    lm, L = tiny(family), 1
    cfg = lm.model.config
    cap = lm.capture(TEXTS, [f"router.{L}", f"expert_out.{L}", f"mlp_in.{L}", f"mlp_out.{L}"],
                     stop_early=False)
    logits, per = cap[f"router.{L}"], cap[f"expert_out.{L}"]  # (N, E), (N, E, d)
    assert per.shape[1:] == (logits.shape[1], lm.d_model)
    probs = torch.softmax(logits.float(), -1)
    top, idx = probs.topk(cfg.num_experts_per_tok, -1)
    if family == "mixtral" or cfg.norm_topk_prob:
        top = top / top.sum(-1, keepdim=True)
    want = (per.gather(1, idx[..., None].expand(-1, -1, lm.d_model)) * top[..., None]).sum(1)
    if family == "qwen2_moe":  # the gated shared expert
        mlp, x = lm.block_part(L, "mlp"), cap[f"mlp_in.{L}"]
        want = want + torch.sigmoid(mlp.shared_expert_gate(x)) * mlp.shared_expert(x)
    torch.testing.assert_close(want, cap[f"mlp_out.{L}"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="read-only"):
        with lm.intervene(ms.Replace(f"router.{L}", torch.zeros_like)):
            lm.forward(TEXTS)
    with pytest.raises(ValueError, match="expert_out"):
        lm.site(f"mlp_post.{L}")


def _discovered(cls, **kw):
    tok = tiny_tokenizer()
    cfg = cls(vocab_size=len(tok), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
              bos_token_id=0, eos_token_id=2, pad_token_id=0, **kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return ms.LM.from_hf(tf.AutoModelForCausalLM.from_config(cfg), tok)


@pytest.mark.parametrize("cls,parallel,post_norm", [
    (tf.Starcoder2Config, False, False), (tf.Olmo3Config, False, True),
    (tf.PhiConfig, True, False)])
def test_unknown_families_are_discovered_with_one_warning(cls, parallel, post_norm, caplog):
    with caplog.at_level(logging.WARNING, logger="mindscope.core._families"):
        lm = _discovered(cls)
        _discovered(cls)
    assert lm.family not in FAMILIES
    assert caplog.text.count("not in mindscope's family table") == 1
    assert lm.parallel == parallel
    assert (lm.family_spec.attn_out == "post_attention_layernorm") == post_norm
    _check_against_hf(lm)
    cap = lm.capture(TEXTS, ["head_out.1", "mlp_post.1", "z.1"], stop_early=False)
    assert cap["head_out.1"].shape[1:] == (4, 64) and cap["z.1"].shape[1:] == (4, 16)


def test_gemma3_multimodal_text_part():
    lm = tiny_vlm("gemma3")
    assert type(lm.model).__name__ == "Gemma3ForConditionalGeneration"
    assert (lm.n_layers, lm.d_model) == (4, 64)
    _check_against_hf(lm)
    gens = lm.generate(TEXTS[:2], max_new_tokens=3)
    assert all(len(g.token_ids) <= 3 for g in gens)


def test_qwen2_vl_text_part():
    tok = tiny_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=128, bos_token_id=0, eos_token_id=2,
                pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                 "mrope_section": [2, 3, 3]})
    vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2)
    cfg = tf.Qwen2VLConfig(text_config=text, vision_config=vision)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    lm = ms.LM.from_hf(tf.Qwen2VLForConditionalGeneration(cfg).eval(), tok)
    assert lm.family_spec is FAMILIES["qwen2_vl"]
    _check_against_hf(lm)  # image prompts: tests/core/test_vision_qwen.py
