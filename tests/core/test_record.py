"""Streaming monitor and record during generate: rows across batches, EOS stops a row, bounded
buffers, per-call callbacks; each row equals a capture of its own prompt + generated tokens."""
import pytest
import torch

import mindscope as ms
from mindscope.core import Batch

PROMPTS = ["hello there", "Alice met Bob in the garden", "def"]
TOL = dict(atol=1e-4, rtol=1e-4)


def _fed(lm, prompt, gen):
    """Token ids the model was fed for one row: the prompt and every generated token that was
    fed back (all of them if the row stopped at EOS, else all but the last)."""
    ids = lm.tokenize([prompt], chat=True).input_ids[0]
    toks = gen.token_ids if gen.finished else gen.token_ids[:-1]
    return torch.cat([ids, torch.tensor(toks, dtype=torch.long)])


def _ref(lm, ids, site):
    b = Batch(ids[None], torch.ones(1, len(ids), dtype=torch.long))
    return lm.capture(b, site)[site]  # (n, d)


def test_monitor_keeps_rows_across_batches_and_stops_at_eos(tiny):
    lm = tiny("llama")
    D = torch.randn(2, lm.d_model)
    free = lm.generate(PROMPTS, chat=True, max_new_tokens=6, stop_at_eos=False)
    eos = free[0].token_ids[2]  # make row 0 stop at its third token
    cfg = lm.model.generation_config
    old = cfg.eos_token_id
    cfg.eos_token_id = [old, eos]
    try:
        calls = []
        with lm.monitor({"resid_post.2": D}, callback=lambda *a: calls.append(a)) as mon:
            gens = lm.generate(PROMPTS, chat=True, max_new_tokens=6, batch_size=2)
    finally:
        cfg.eos_token_id = old
    assert gens[0].finished
    rows = mon.per_row("resid_post.2")
    assert len(rows) == 3  # 3 prompts in batches of 2 -> 3 rows
    Dn = D / D.norm(dim=-1, keepdim=True)
    for r, (p, g) in enumerate(zip(PROMPTS, gens)):
        ref = _ref(lm, _fed(lm, p, g), "resid_post.2") @ Dn.T
        assert rows[r].shape == ref.shape  # nothing recorded after the row's EOS
        torch.testing.assert_close(rows[r], ref, **TOL)
    P, pads = mon.projections["resid_post.2"], mon.pads
    assert P.shape[0] == 3 and torch.equal(P[0, int(pads[0]):], rows[0])
    site, idx, vals, mask = calls[0]
    assert site == "resid_post.2" and idx.tolist() == [0, 1] and vals.shape[-1] == 2
    assert sum(int(c[3].sum()) for c in calls) == sum(r.shape[0] for r in rows)


def test_bounded_buffer_keeps_the_latest_tokens(tiny):
    lm = tiny("llama")
    D = torch.randn(lm.d_model)
    with lm.monitor({"resid_post.1": D}) as full:
        lm.generate(PROMPTS, chat=True, max_new_tokens=5, stop_at_eos=False, batch_size=2)
    with lm.monitor({"resid_post.1": D}, max_tokens=4) as short:
        lm.generate(PROMPTS, chat=True, max_new_tokens=5, stop_at_eos=False, batch_size=2)
    for a, b in zip(full.per_row("resid_post.1"), short.per_row("resid_post.1")):
        torch.testing.assert_close(b, a[-4:])
    with pytest.raises(ValueError, match="max_tokens must be > 0"):
        lm.monitor({"resid_post.1": D}, max_tokens=0)


def test_record_during_generate_equals_capture(tiny):
    lm = tiny("qwen2")
    with lm.record(["resid_post.1", "z.2[1]"], positions="generated") as rec:
        gens = lm.generate(PROMPTS, chat=True, max_new_tokens=4, stop_at_eos=False, batch_size=2)
    for r, (p, g) in enumerate(zip(PROMPTS, gens)):
        ids = _fed(lm, p, g)
        n = len(g.token_ids) - 1  # generated tokens fed back
        torch.testing.assert_close(rec.per_row("resid_post.1")[r],
                                   _ref(lm, ids, "resid_post.1")[-n:], **TOL)
        torch.testing.assert_close(rec.per_row("z.2[1]")[r], _ref(lm, ids, "z.2[1]")[-n:], **TOL)
    with pytest.raises(KeyError, match="not recorded"):
        rec.per_row("resid_post.3")


def test_record_attention_pattern_during_generate(tiny):
    lm = tiny("llama")
    with lm.record("attn_pattern.1") as rec:
        gens = lm.generate(PROMPTS[:2], chat=True, max_new_tokens=3, stop_at_eos=False)
    for r, (p, g) in enumerate(zip(PROMPTS[:2], gens)):
        ids = _fed(lm, p, g)
        ref = _ref(lm, ids, "attn_pattern.1")  # (n, H, n)
        got = rec.per_row("attn_pattern.1")[r]
        assert got.shape[0] == len(ids)
        torch.testing.assert_close(got[..., : ref.shape[-1]], ref, **TOL)
