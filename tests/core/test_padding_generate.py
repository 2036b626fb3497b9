"""Padding-correctness and KV-cached generation against full recomputation."""
import pytest
import torch

import mindscope as ms
from mindscope.testing import TINY_FAMILIES

TEXTS = ["The quick brown fox jumps over the lazy dog", "Alice", "def add(a, b):"]
TOL = dict(atol=1e-4, rtol=1e-4)  # stated tolerance: fp32, eager attention


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_left_padded_batch_equals_one_by_one(tiny, family):
    lm = tiny(family)
    batch = lm.forward(TEXTS)
    b = lm.tokenize(TEXTS)
    for i, t in enumerate(TEXTS):
        single = lm.forward([t])[0]
        torch.testing.assert_close(batch[i, int(b.pad[i]):], single, **TOL)


def step_by_step(lm, prompt, n, ivs):
    """Reference: greedy decoding by full recomputation (no cache) with the same interventions,
    where 'generated' positions are those past the prompt."""
    b = lm.tokenize([prompt], chat=True)
    ids = b.input_ids[0].tolist()
    P = len(ids)
    logits_seq = []
    for _ in range(n):
        x = torch.tensor([ids])
        gen_mask = torch.zeros(1, len(ids), dtype=torch.bool)
        gen_mask[0, P:] = True
        explicit = {"generated": gen_mask, "prompt": ~gen_mask, "all": "all"}
        full = [type(iv)(**{**iv.__dict__, "positions": explicit[iv.positions]}) for iv in ivs]
        with lm.intervene(*full):
            lg = lm.forward(ms.core.Batch(x, torch.ones_like(x), b.meta))[0, -1]
        logits_seq.append(lg)
        ids.append(int(lg.argmax()))
    return ids[P:], logits_seq


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "qwen3"])
@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_steered_generate_equals_full_recomputation(tiny, family, positions):
    lm = tiny(family)
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))
    ivs = [ms.Add("resid_post.1", v, scale=2.0, positions=positions)]
    prompts = ["hello there", "Tell me about the ocean and the mountains"]
    got = lm.generate(prompts, chat=True, max_new_tokens=6, interventions=ivs, stop_at_eos=False)
    for p, g in zip(prompts, got):
        ref_ids, ref_logits = step_by_step(lm, p, 6, ivs)
        assert g.token_ids == ref_ids
        ref_lp = [float(torch.log_softmax(l, -1)[t]) for l, t in zip(ref_logits, ref_ids)]
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(ref_lp), **TOL)


def test_generate_matches_hf_generate_unsteered(tiny):
    lm = tiny("llama")
    prompts = ["hello there", "Tell me about music"]
    ours = lm.generate(prompts, chat=True, max_new_tokens=8, stop_at_eos=False)
    for p, g in zip(prompts, ours):
        b = lm.tokenize([p], chat=True)
        hf = lm.model.generate(b.input_ids, attention_mask=b.attention_mask, max_new_tokens=8,
                               do_sample=False, min_new_tokens=8, pad_token_id=0)
        assert g.token_ids == hf[0, b.input_ids.shape[1]:].tolist()


def test_per_row_steering_in_generate_equals_separate(tiny):
    lm = tiny("llama")
    V = torch.randn(4, lm.d_model, generator=torch.Generator().manual_seed(5))
    s = torch.tensor([1.0, 2.0, -1.0, 0.0])
    prompts = ["hello there", "Tell me about music", "Alice", "the ocean"]
    batched = lm.generate(prompts, chat=True, max_new_tokens=5, stop_at_eos=False, batch_size=3,
                          interventions=[ms.Add("resid_post.2", V, scale=s)])
    for i, p in enumerate(prompts):
        one = lm.generate([p], chat=True, max_new_tokens=5, stop_at_eos=False,
                          interventions=[ms.Add("resid_post.2", V[i], scale=float(s[i]))])
        assert batched[i].token_ids == one[0].token_ids


def test_sampling_is_seeded(tiny):
    lm = tiny("llama")
    a = lm.generate(["hi", "yo"], chat=True, max_new_tokens=6, temperature=1.0, seed=7, stop_at_eos=False)
    b = lm.generate(["hi", "yo"], chat=True, max_new_tokens=6, temperature=1.0, seed=7, stop_at_eos=False)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_monitor_records_every_token(tiny):
    lm = tiny("llama")
    D = torch.randn(2, lm.d_model)
    with lm.monitor({"resid_post.2": D}) as mon:
        out = lm.generate(["hello there"], chat=True, max_new_tokens=5, stop_at_eos=False)
    P = mon.projections["resid_post.2"]
    b = lm.tokenize(["hello there"], chat=True)
    T = b.input_ids.shape[1]
    assert P.shape == (1, T + 4, 2)  # the last sampled token is never fed back
    full_ids = torch.cat([b.input_ids[0], torch.tensor(out[0].token_ids[:-1])])
    ref = lm.capture(ms.core.Batch(full_ids[None], torch.ones(1, T + 4, dtype=torch.long)),
                     "resid_post.2")["resid_post.2"]
    Dn = D / D.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(P[0], ref @ Dn.T, **TOL)


def test_span_and_role_positions(tiny):
    lm = tiny("llama")
    p = lm.chat([{"role": "user", "content": "Trial 1: Do you detect an injected thought?"}],
                prefill="Yes")
    v = torch.randn(lm.d_model) * 3
    base = lm.capture([p], "resid_post.1")
    with lm.intervene(ms.Add("resid_post.1", v, positions=ms.span("Trial 1", start_offset=-1,
                                                                   through_end=True))):
        got = lm.capture([p], "resid_post.1")
    changed = ((got["resid_post.1"] - base["resid_post.1"]).norm(dim=-1) > 0)
    meta = lm.tokenize([p]).meta[0]
    start_char = p.text.index("Trial 1")
    first = min(i for i, (a, b) in enumerate(meta.offsets) if b > start_char)
    assert changed.nonzero().flatten().tolist() == list(range(first - 1, len(meta.offsets)))
    asst = lm.capture([p], "resid_post.1", positions=ms.role("assistant"))
    n_yes = sum(1 for a, b in meta.offsets if b > len(p.text) - 3)
    assert asst["resid_post.1"].shape[0] == n_yes >= 1  # the prefill "Yes" tokens
    user = lm.capture([p], "resid_post.1", positions=ms.role("user"))
    assert user["resid_post.1"].shape[0] > 5
    with pytest.raises(ValueError, match="not found"):
        lm.capture([p], "resid_post.1", positions=ms.span("absent text"))
