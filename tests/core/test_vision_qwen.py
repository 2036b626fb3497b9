"""Qwen2-VL / Qwen2.5-VL image prompts: 3-D multimodal rotary positions. Every site of a tiny
random Qwen2-VL and Qwen2.5-VL (vision tower + 4-layer language model) equals the HF reference on a prompt with an
image: hidden states, output_attentions (eager), and forward hooks on the HF modules while HF
computes its own positions; batched (left padding, mixed grids, a text-only row) == one at a
time; image positions; greedy generation equals HF generate."""
import numpy as np
import pytest
import torch

import mindscope as ms
from mindscope.testing import tiny_vlm

L = 2
SITES = ["embed", f"resid_pre.{L}", f"resid_mid.{L}", f"resid_post.{L}", f"attn_out.{L}",
         f"mlp_in.{L}", f"mlp_post.{L}", f"mlp_out.{L}", f"q.{L}", f"k.{L}", f"v.{L}", f"z.{L}",
         f"head_out.{L}", f"attn_scores.{L}", "final_norm",
         f"module:model.language_model.layers.{L}.mlp"] + [f"attn_pattern.{i}" for i in range(4)]


def _img(seed, h, w):
    from PIL import Image
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def vlm(request):
    return tiny_vlm(request.param)


def _hf(vlm, text, images):
    """HF's own forward (its own 3-D positions) on the processor's output, with hooks keeping
    the module inputs/outputs that define each site."""
    ref = vlm.processor(text=[text], images=[images], return_tensors="pt")
    blk = vlm.model.model.language_model.layers[L]
    kept, hooks = {}, []

    def keep(name, inp=False):
        def fn(m, args, out):
            kept[name] = (args[0] if inp else out[0] if isinstance(out, tuple) else out)[0]
        return fn
    for name, mod, inp in [("q", blk.self_attn.q_proj, False), ("k", blk.self_attn.k_proj, False),
                           ("v", blk.self_attn.v_proj, False), ("z", blk.self_attn.o_proj, True),
                           ("attn_out", blk.self_attn, False),
                           ("mlp_in", blk.post_attention_layernorm, False),
                           ("mlp_post", blk.mlp.down_proj, True), ("mlp_out", blk.mlp, False)]:
        hooks.append(mod.register_forward_hook(keep(name, inp)))
    try:
        with torch.no_grad():
            out = vlm.model(**ref, output_hidden_states=True, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    return ref, out, kept


def test_every_site_equals_hf_on_an_image_prompt(vlm):
    p = ms.ImagePrompt("What is in the picture?", [_img(0, 60, 90)])  # a 2x3 grid: h != w
    b = vlm.tokenize([p])
    text = "<|vision_start|><|image_pad|><|vision_end|>\nWhat is in the picture?"
    ref, out, hk = _hf(vlm, text, [_img(0, 60, 90)])
    assert torch.equal(b.input_ids[0], ref["input_ids"][0])
    assert ref["image_grid_thw"].tolist() == [[1, 4, 6]]
    cap = vlm.capture([p], SITES, stop_early=False)
    hs, T, H, dh = out.hidden_states, ref["input_ids"].shape[1], 4, 16
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cap["embed"], hs[0][0], **close)  # image features scattered in
    torch.testing.assert_close(cap[f"resid_pre.{L}"], hs[L][0], **close)
    torch.testing.assert_close(cap[f"resid_post.{L}"], hs[L + 1][0], **close)
    torch.testing.assert_close(cap["final_norm"], hs[-1][0], **close)
    torch.testing.assert_close(cap.logits[0], out.logits[0], atol=1e-4, rtol=1e-4)
    for i in range(4):  # (T, H, S) query-major vs HF (H, T, S)
        torch.testing.assert_close(cap[f"attn_pattern.{i}"].transpose(0, 1), out.attentions[i][0],
                                   **close)
    for s in ("attn_out", "mlp_in", "mlp_post", "mlp_out"):
        torch.testing.assert_close(cap[f"{s}.{L}"], hk[s], **close)
    torch.testing.assert_close(cap[f"module:model.language_model.layers.{L}.mlp"], hk["mlp_out"],
                               **close)
    torch.testing.assert_close(cap[f"q.{L}"], hk["q"].view(T, H, dh), **close)
    torch.testing.assert_close(cap[f"k.{L}"], hk["k"].view(T, 2, dh), **close)
    torch.testing.assert_close(cap[f"v.{L}"], hk["v"].view(T, 2, dh), **close)
    torch.testing.assert_close(cap[f"z.{L}"], hk["z"].view(T, H, dh), **close)
    W = vlm.model.model.language_model.layers[L].self_attn.o_proj.weight  # (d, H*dh)
    per_head = torch.einsum("thd,ehd->the", hk["z"].view(T, H, dh), W.view(-1, H, dh))
    torch.testing.assert_close(cap[f"head_out.{L}"], per_head, **close)
    torch.testing.assert_close(cap[f"head_out.{L}"].sum(1), cap[f"attn_out.{L}"], **close)
    torch.testing.assert_close(torch.softmax(cap[f"attn_scores.{L}"], -1), out.attentions[L][0]
                               .transpose(0, 1), **close)
    torch.testing.assert_close(cap[f"resid_mid.{L}"], hs[L][0] + hk["attn_out"], **close)


def test_plain_1d_positions_would_be_wrong(vlm):
    """The control: the same call with 1-D positions gives other activations, so the
    equalities above rest on the 3-D positions."""
    p = ms.ImagePrompt("What is in the picture?", [_img(0, 60, 90)])
    b = vlm.tokenize([p])
    with torch.no_grad():
        flat = vlm.model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                         position_ids=vlm.position_ids(b.attention_mask), **b.model_inputs(),
                         output_hidden_states=True).hidden_states[-1][0]
    good = vlm.capture([p], "final_norm")["final_norm"]
    assert (flat - good).abs().max() > 1e-3


def test_batched_with_padding_equals_one_at_a_time(vlm):
    prompts = [ms.ImagePrompt("Describe it.", [_img(1, 60, 60)]),
               "A text-only prompt, longer than the others here",
               ms.ImagePrompt("Two <|image_pad|> and <|image_pad|> pictures",
                              [_img(2, 84, 56), _img(3, 56, 84)])]
    sites = [f"resid_post.{L}", f"attn_pattern.{L}", f"z.{L}", f"mlp_post.{L}"]
    allb = vlm.capture(prompts, sites, stop_early=False)
    for r, p in enumerate(prompts):
        one = vlm.capture([p], sites, stop_early=False)
        S = one[f"attn_pattern.{L}"].shape[-1]
        for s in sites:
            got = allb[s][allb.row == r]
            got = got[..., :S] if s.startswith("attn_pattern") else got
            torch.testing.assert_close(got, one[s], atol=1e-5, rtol=1e-5)
    img = vlm.capture(prompts, f"resid_post.{L}", positions=ms.role("image"))
    # 2x2 merged tokens for the 56x56 image, 3x2 and 2x3 for the others
    assert img.row.tolist() == [0] * 4 + [2] * 12
    assert set(img.token_ids.tolist()) == {vlm.image_token_id}
    last = vlm.capture(prompts, f"resid_post.{L}", positions="last")
    for r, p in enumerate(prompts):
        torch.testing.assert_close(last[f"resid_post.{L}"][r],
                                   vlm.capture([p], f"resid_post.{L}")[f"resid_post.{L}"][-1],
                                   atol=1e-5, rtol=1e-5)


def test_generation_after_an_image_equals_hf_generate(vlm):
    """The tokens after the prompt continue from the image's 3-D positions (HF's rope delta)."""
    p = ms.ImagePrompt("What is in the picture?", [_img(4, 60, 90)])
    text = "<|vision_start|><|image_pad|><|vision_end|>\nWhat is in the picture?"
    ref = vlm.processor(text=[text], images=[[_img(4, 60, 90)]], return_tensors="pt")
    with torch.no_grad():
        hf = vlm.model.generate(**ref, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    vlm.model.model.rope_deltas = None  # HF caches its delta on the module; ours is per call
    got = vlm.generate([p], max_new_tokens=6, stop_at_eos=False)[0]
    assert got.token_ids == hf[0, ref["input_ids"].shape[1]:].tolist()
    # batched with another image and a text row == one at a time
    q = ms.ImagePrompt("Describe it.", [_img(5, 56, 56)])
    both = vlm.generate([p, "plain text here", q], max_new_tokens=6, stop_at_eos=False)
    for g, x in zip(both, [p, "plain text here", q]):
        assert g.token_ids == vlm.generate([x], max_new_tokens=6, stop_at_eos=False)[0].token_ids
