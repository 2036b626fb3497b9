"""Issue 25 item 7: one chat default (False: plain text as written) for capture, generate and
tokenize; a warning, not a second wrapping, when a templated string is templated again."""
import inspect
import logging

import torch

from mindscope.core import LM


def test_one_default():
    for fn in (LM.capture, LM.generate, LM.tokenize):
        assert inspect.signature(fn).parameters["chat"].default is False, fn.__name__


def test_generate_default_is_plain_text(tiny):
    lm = tiny("llama")
    a = lm.generate(["hello there"], max_new_tokens=4, stop_at_eos=False, progress=False)
    b = lm.generate(["hello there"], max_new_tokens=4, stop_at_eos=False, chat=False, progress=False)
    assert a[0].token_ids == b[0].token_ids and a[0].prompt == "hello there"


def test_templated_string_is_not_wrapped_twice(tiny, caplog):
    lm = tiny("llama")
    text = lm.chat([{"role": "user", "content": "hi"}]).text
    with caplog.at_level(logging.WARNING):
        twice = lm.tokenize([text], chat=True)
    assert "already holds the chat template" in caplog.text
    assert torch.equal(twice.input_ids, lm.tokenize([lm.chat([{"role": "user", "content": "hi"}])]).input_ids)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        lm.tokenize(["plain words, User: no markers"], chat=True)
    assert "already holds" not in caplog.text
