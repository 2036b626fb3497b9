"""Batched == one prompt at a time, for every family, every site kind, captures and
interventions, with left padding (lm.tokenize) and right padding (a hand-made Batch, and a raw
HF call on a right-padded batch)."""
import pytest
import torch

import mindscope as ms
from mindscope.core import Batch

from mindscope.testing import TINY_FAMILIES

NEW = ["phi3", "mixtral", "qwen2_moe", "qwen3_moe", "granite", "smollm3", "olmo2", "gemma"]

TEXTS = ["The quick brown fox jumps over", "Alice met", "def add(a, b):"]
L = 1


def _sites(lm):
    mlp = [f"router.{L}", f"expert_out.{L}"] if lm.family_spec.moe else [f"mlp_post.{L}"]
    mid = [] if lm.parallel else [f"resid_mid.{L}"]
    return [f"resid_pre.{L}", f"attn_out.{L}", f"mlp_in.{L}", f"mlp_out.{L}", f"q.{L}", f"k.{L}",
            f"v.{L}", f"z.{L}", f"head_out.{L}", f"attn_scores.{L}", f"attn_pattern.{L}",
            f"resid_post.{L}", "embed"] + mid + mlp


def _ivs(lm):
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1))
    return [ms.Add(f"resid_post.{L}", v, scale=3.0, positions="last"),
            ms.Replace(f"z.2[1]", torch.zeros_like),
            ms.Replace("attn_pattern.2[0]", lambda h: h * 0.5, positions=slice(1, None)),
            ms.Add(f"mlp_in.{L}", v, positions=slice(0, 2))]


def _right(lm, texts) -> Batch:
    left = lm.tokenize(texts)
    m = left.attention_mask.bool()
    order = torch.sort(m.long() * -1, dim=1, stable=True).indices  # real tokens first
    return Batch(left.input_ids.gather(1, order), left.attention_mask.gather(1, order), left.meta)


def _last_logits(lm, b: Batch) -> torch.Tensor:
    """Raw HF call (no lm.forward): the hooks derive padding from the mask alone."""
    with torch.no_grad():
        out = lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                       position_ids=lm.position_ids(b.attention_mask)).logits
    last = b.attention_mask.shape[1] - 1 - b.attention_mask.flip(1).argmax(1)  # (B,)
    return out[torch.arange(len(b)), last]


@pytest.mark.parametrize("family", list(TINY_FAMILIES) + NEW)
def test_batched_equals_one_at_a_time_left_and_right_padding(tiny, family):
    lm = tiny(family)
    sites = _sites(lm)
    right = _right(lm, TEXTS)
    assert right.right_padded and not lm.tokenize(TEXTS).right_padded
    singles = [lm.capture([t], sites, stop_early=False) for t in TEXTS]
    for batch in (TEXTS, right):
        cap = lm.capture(batch, sites, stop_early=False)
        for r, one in enumerate(singles):
            rows = cap.row == r
            assert torch.equal(cap.pos[rows], one.pos)
            for s in sites:
                got, want = cap[s][rows], one[s]
                if "attn_" in s and s.split(".")[0] in ("attn_scores", "attn_pattern"):
                    assert bool((got[..., want.shape[-1]:] == 0).all())
                    got = got[..., : want.shape[-1]]
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=s)
    last = lm.capture(right, "resid_post.1", positions="last")  # not a pad of a short row
    for r, one in enumerate(singles):
        torch.testing.assert_close(last["resid_post.1"][r], one["resid_post.1"][-1],
                                   atol=1e-4, rtol=1e-4)
    with lm.intervene(_ivs(lm)):
        ref = torch.stack([lm.forward([t])[0, -1] for t in TEXTS])
        left_b = lm.forward(TEXTS)[:, -1]
        right_b = _last_logits(lm, right)
    torch.testing.assert_close(left_b, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(right_b, ref, atol=1e-4, rtol=1e-4)
    plain = torch.stack([lm.forward([t])[0, -1] for t in TEXTS])
    assert not torch.allclose(plain, ref, atol=1e-3)  # the interventions did something
