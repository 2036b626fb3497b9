"""Attention sites against references: patterns = HF output_attentions, z = pattern @ v,
head_out sums to attn_out, edits of q / z / patterns change the model as the math says."""
import copy
import logging

import pytest
import torch

import mindscope as ms
from mindscope.testing import TINY_FAMILIES, tiny_lm

TEXTS = ["The quick brown fox jumps", "Alice met Bob in the garden today", "def"]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_pattern_equals_hf_output_attentions_and_z_is_pattern_times_v(tiny, family):
    lm, L = tiny(family), 1
    cap = lm.capture(TEXTS, [f"attn_pattern.{L}", f"attn_scores.{L}", f"v.{L}", f"z.{L}"],
                     stop_early=False)
    H, G = lm.n_heads, lm.n_heads // lm.n_kv_heads
    for r, text in enumerate(TEXTS):
        b = lm.tokenize([text])
        ref = lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                       output_attentions=True).attentions[L][0]  # (H, T, T)
        T = ref.shape[-1]
        rows = cap.row == r
        pat = cap[f"attn_pattern.{L}"][rows]  # (T, H, S)
        assert pat.shape[:2] == (T, H)
        torch.testing.assert_close(pat[:, :, :T].transpose(0, 1), ref, atol=1e-5, rtol=1e-5)
        assert bool((pat[:, :, T:] == 0).all())  # keys past the row's end are zero padding
        sm = torch.softmax(cap[f"attn_scores.{L}"][rows][:, :, :T], -1)
        torch.testing.assert_close(sm, pat[:, :, :T], atol=1e-5, rtol=1e-5)
        v = cap[f"v.{L}"][rows].repeat_interleave(G, dim=1)  # (T, H, dh)
        z = torch.einsum("ths,shd->thd", pat[:, :, :T], v)
        torch.testing.assert_close(cap[f"z.{L}"][rows], z, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_head_out_sums_to_attn_out(tiny, family):
    lm, L = tiny(family), 2
    fam = lm.family_spec
    cap = lm.capture(TEXTS, [f"head_out.{L}", f"z.{L}", f"attn_out.{L}",
                             f"module:{fam.layers}.{L}.{fam.o_proj}"], stop_early=False)
    proj = lm.block_part(L, fam.o_proj)
    bias = proj.bias if getattr(proj, "bias", None) is not None else 0
    total = cap[f"head_out.{L}"].sum(1) + bias  # (N, d)
    torch.testing.assert_close(total, cap[f"module:{fam.layers}.{L}.{fam.o_proj}"],
                               atol=1e-5, rtol=1e-5)
    z = cap[f"z.{L}"].flatten(1)
    torch.testing.assert_close(total, proj(z), atol=1e-5, rtol=1e-5)
    if fam.heads_additive:
        torch.testing.assert_close(total, cap[f"attn_out.{L}"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_head_ablation_through_z_and_head_out(tiny, family):
    lm, L, h = tiny(family), 1, 2
    ref = lm.capture(TEXTS, [f"head_out.{L}", f"attn_out.{L}"], stop_early=False)
    want = ref[f"attn_out.{L}"] - ref[f"head_out.{L}"][:, h]
    for site in (f"z.{L}[{h}]", f"head_out.{L}[{h}]"):
        with lm.intervene(ms.Replace(site, torch.zeros_like)):
            got = lm.capture(TEXTS, [f"attn_out.{L}", f"z.{L}"], stop_early=False)
        torch.testing.assert_close(got[f"attn_out.{L}"], want, atol=1e-5, rtol=1e-5)
        if site.startswith("z"):
            assert bool((got[f"z.{L}"][:, h] == 0).all())
    one = lm.capture(TEXTS, f"z.{L}", heads=h)  # heads= equals the [h] spelling
    every = lm.capture(TEXTS, f"z.{L}")
    assert list(one.acts) == [f"z.{L}[{h}]"]
    torch.testing.assert_close(one[f"z.{L}[{h}]"], every[f"z.{L}"][:, h])


def test_zero_query_gives_uniform_pattern_and_pattern_edit_reaches_z(tiny):
    lm, L = tiny("llama"), 1
    with lm.intervene(ms.Replace(f"q.{L}", torch.zeros_like)):
        cap = lm.capture(TEXTS[:1], f"attn_pattern.{L}")
    pat = cap[f"attn_pattern.{L}"]  # (T, H, T)
    T = pat.shape[0]
    want = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1).unsqueeze(1)
    torch.testing.assert_close(pat, want.unsqueeze(1).expand(T, lm.n_heads, T))
    with lm.intervene(ms.Replace(f"attn_pattern.{L}[0]", torch.zeros_like)):
        cap = lm.capture(TEXTS, [f"z.{L}", f"attn_pattern.{L}"])
    assert bool((cap[f"z.{L}"][:, 0] == 0).all()) and bool((cap[f"attn_pattern.{L}"][:, 0] == 0).all())
    assert bool((cap[f"z.{L}"][:, 1] != 0).any())


def test_pattern_kernel_only_while_requested(caplog):
    lm = tiny_lm("llama", attn_implementation="sdpa")
    assert lm.model.config._attn_implementation == "sdpa"
    seen = []
    with lm.intervene(ms.Replace("z.0", lambda h: seen.append(
            lm.model.config._attn_implementation) or h)):
        lm.forward(TEXTS)
    assert set(seen) == {"sdpa"}  # z, q, head_out ... keep the fast kernel
    with caplog.at_level(logging.INFO, logger="mindscope.core._attn"):
        cap = lm.capture(TEXTS, "attn_pattern.0")
    assert "switching attention from sdpa" in caplog.text
    assert lm.model.config._attn_implementation == "sdpa"  # restored afterwards
    ref = tiny_lm("llama").capture(TEXTS, "attn_pattern.0")  # same seed, eager
    torch.testing.assert_close(cap["attn_pattern.0"], ref["attn_pattern.0"], atol=1e-5, rtol=1e-5)


def test_bad_attention_input_errors(tiny):
    lm = tiny("llama")
    with pytest.raises(ValueError, match="head index 7 is out of range.*4 heads"):
        lm.capture(TEXTS, "z.1[7]")
    with pytest.raises(ValueError, match="head index 3 is out of range.*2 heads"):
        lm.site("k.1[3]")  # 2 key/value heads
    with pytest.raises(ValueError, match="no module 'model.layers.1.mpl'.*model.layers.1.mlp"):
        lm.capture(TEXTS, "module:model.layers.1.mpl")
    with pytest.raises(ValueError, match="only .* have heads"):
        lm.site("resid_post.1[0]")
    m = copy.deepcopy(lm.model)

    class Opaque(torch.nn.Module):  # an attention whose kernel is not pluggable
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *a, **k):
            return self.inner(*a, **k)
    m.model.layers[1].self_attn = Opaque(m.model.layers[1].self_attn)
    other = ms.LM.from_hf(m, lm.tokenizer)
    with pytest.raises(ValueError, match="cannot read attention patterns of Opaque.*z.L"):
        other.capture(TEXTS, "attn_pattern.1")
    assert other._hooks.handles == {} and not other._hooks.handlers


def test_module_site_reads_and_writes_any_module(tiny):
    lm = tiny("llama")
    cap = lm.capture(TEXTS, ["module:model.layers.1.mlp", "mlp_out.1"])
    torch.testing.assert_close(cap["module:model.layers.1.mlp"], cap["mlp_out.1"])
    with lm.intervene(ms.Replace("module:model.layers.1.mlp", torch.zeros_like)):
        cap = lm.capture(TEXTS, ["resid_mid.1", "resid_post.1"])
    torch.testing.assert_close(cap["resid_mid.1"], cap["resid_post.1"])


def test_generate_with_head_sites_matches_unhooked(tiny):
    lm = tiny("qwen2")
    base = lm.generate(TEXTS, max_new_tokens=4)
    with lm.intervene(ms.Replace("attn_pattern.1", lambda h: h), ms.Replace("z.2[1]", lambda h: h)):
        same = lm.generate(TEXTS, max_new_tokens=4)
    assert [g.token_ids for g in base] == [g.token_ids for g in same]
