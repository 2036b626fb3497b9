"""``lm.run_context`` + ``lm.call``: driving the model directly (full batch, or a continuation
on a KV cache) gives what ``lm.forward`` gives, interventions included."""
import inspect

import pytest
import torch

import mindscope as ms

TEXTS = ["The quick brown fox jumps over the lazy dog", "Alice met the fox at noon"]
TOL = dict(atol=1e-4, rtol=1e-4)


def _add(lm, where=ms.span("fox")):
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    return ms.Add("resid_post.0", v, scale=4.0, positions=where)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_call_in_run_context_equals_forward(tiny, family):
    lm = tiny(family)
    b = lm.tokenize(TEXTS)
    with lm.intervene(_add(lm)):
        ref = lm.forward(b)
        with torch.no_grad(), lm.run_context(b) as run:
            got = lm.call(b.input_ids, b.attention_mask, use_cache=False).logits
    assert run.meta is b.meta  # the span was resolved against this batch's text
    torch.testing.assert_close(got, ref, **TOL)
    assert not torch.allclose(ref, lm.forward(b), **TOL)  # the intervention did something


def test_continuation_on_kv_cache_equals_forward(tiny):
    lm = tiny("llama")
    b = lm.tokenize(TEXTS)
    T, n = b.input_ids.shape[1], 5  # run the last n columns on the cache of the first T - n
    kw = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"
    # the last "the" of row 0 is in the continuation, that of row 1 in the cached part
    with lm.intervene(_add(lm, ms.span("the", occurrence=-1))):
        ref = lm.forward(b)
        with torch.no_grad():
            pre = ms.Batch(b.input_ids[:, :T - n], b.attention_mask[:, :T - n], b.meta)
            with lm.run_context(pre):
                res = lm.call(pre.input_ids, pre.attention_mask, use_cache=True)
            cache = getattr(res, kw, None) or res.past_key_values
            with lm.run_context(b):  # positions resolve in the coordinates of the whole batch
                got = lm.call(b.input_ids[:, T - n:], b.attention_mask, use_cache=True,
                              **{kw: cache}).logits
    assert got.shape[1] == n
    torch.testing.assert_close(got, ref[:, T - n:], **TOL)
    assert not torch.allclose(ref[:, T - n:], lm.forward(b)[:, T - n:], **TOL)


def test_run_context_restores_binding_on_error(tiny):
    lm = tiny("llama")
    b = lm.tokenize(TEXTS)
    with pytest.raises(RuntimeError, match="boom"):
        with lm.run_context(b):
            raise RuntimeError("boom")
    ref = lm.forward(["Alice"])  # a later plain call is unaffected by the aborted binding
    with torch.no_grad():
        raw = lm.model(input_ids=lm.tokenize(["Alice"]).input_ids).logits
    torch.testing.assert_close(ref, raw, **TOL)
