"""Parsed Site values, TransformerLens / nnsight spellings, and full-tensor Replace."""
import logging

import pytest
import torch

import mindscope as ms
from mindscope.core import Site

TEXTS = ["The quick brown fox jumps", "Alice met Bob"]


def test_expand_sites_returns_parsed_sites(tiny):
    lm = tiny("llama")
    got = lm.expand_sites("z.1[0,2],resid_post.2:4,module:model.layers.0.mlp")
    assert got == ["z.1[0,2]", "resid_post.2", "resid_post.3", "module:model.layers.0.mlp"]
    assert all(isinstance(s, Site) for s in got)
    assert (got[0].kind, got[0].layer, got[0].heads, got[0].base) == ("z", 1, (0, 2), "z.1")
    assert got[3].kind == "module" and got[3].path == "model.layers.0.mlp"
    assert lm.site(got[0]) is got[0]  # parsed once: a Site passes through unparsed


@pytest.mark.parametrize("tl,ours", [
    ("blocks.2.hook_resid_post", "resid_post.2"), ("blocks.1.hook_resid_pre", "resid_pre.1"),
    ("blocks.1.hook_resid_mid", "resid_mid.1"), ("blocks.3.hook_attn_out", "attn_out.3"),
    ("blocks.0.hook_mlp_out", "mlp_out.0"), ("blocks.1.attn.hook_pattern", "attn_pattern.1"),
    ("blocks.1.attn.hook_attn_scores", "attn_scores.1"), ("blocks.1.attn.hook_q", "q.1"),
    ("blocks.1.attn.hook_k", "k.1"), ("blocks.1.attn.hook_v", "v.1"), ("blocks.1.attn.hook_z", "z.1"),
    ("blocks.2.mlp.hook_post", "mlp_post.2"), ("blocks.2.ln2.hook_normalized", "mlp_in.2"),
    ("blocks.2.attn.hook_result", "head_out.2"), ("hook_embed", "embed"),
    ("ln_final.hook_normalized", "final_norm"),
    ("model.model.layers[1].mlp.output", "module:model.layers.1.mlp"),
    ("model.layers[1].self_attn.output", "module:model.layers.1.self_attn")])
def test_transformerlens_and_nnsight_names(tiny, tl, ours, caplog):
    lm = tiny("llama")
    with caplog.at_level(logging.WARNING, logger="mindscope.core._sites"):
        assert lm.site(tl) == ours
    cap = lm.capture(TEXTS, [tl, ours], stop_early=False)
    assert list(cap.acts) == [ours]  # one site, read once


def test_tl_name_note_and_unknown_pre(tiny, caplog):
    lm = tiny("llama")
    with caplog.at_level(logging.WARNING, logger="mindscope.core._sites"):
        lm.site("blocks.3.hook_resid_post")
    assert "read as 'resid_post.3'" in caplog.text
    with pytest.raises(ValueError, match="mlp_post.1"):
        lm.site("blocks.1.mlp.hook_pre")


def test_replace_full_tensor_like_a_tl_hook(tiny):
    lm = tiny("llama")
    seen = []

    def hook(h):  # a TransformerLens-style hook: the whole (B, T, d) activation
        seen.append(tuple(h.shape))
        h = h.clone()
        h[:, :, 0] = 7.0
        return h
    with lm.intervene(ms.Replace("blocks.1.hook_resid_post", hook, full=True, positions="last")):
        cap = lm.capture(TEXTS, "resid_post.1")
    b = lm.tokenize(TEXTS)
    assert seen == [tuple(b.input_ids.shape) + (lm.d_model,)]
    x = cap["resid_post.1"][:, 0]
    last = torch.tensor([i == len(r) - 1 for r in (cap.pos[cap.row == k] for k in range(2))
                         for i in range(len(r))])
    assert bool((x[last] == 7).all()) and not bool((x[~last] == 7).any())
    with pytest.raises(ValueError, match="fn returned None"):
        with lm.intervene(ms.Replace("resid_post.1", lambda h: None, full=True)):
            lm.forward(TEXTS)
