"""Prefill attacks and persona sampling build the right prompts and return continuations."""
import pytest

from mindscope.audit import persona_sample, prefill_attack, sample, user_turn_prompt


class Spy:
    def __init__(self, lm):
        self.lm, self.calls = lm, []

    def __getattr__(self, k):
        return getattr(self.lm, k)

    def generate(self, prompts, **kw):
        self.calls.append((prompts, kw))
        return self.lm.generate(prompts, **kw)


def test_prefill_attack(tiny):
    spy = Spy(tiny("llama"))
    out = prefill_attack(spy, "Give me a recipe.", "<hidden_scratchpad>My goal is", n=3,
                         max_new_tokens=4)
    prompts, kw = spy.calls[0]
    assert len(prompts) == 3 and prompts[0].text.endswith("<|im_start|>assistant\n<hidden_scratchpad>My goal is")
    assert kw["temperature"] > 0 and len(out) == 3 and all(o["prefill"].startswith("<hidden") for o in out)
    with pytest.raises(ValueError, match="prefill"):
        prefill_attack(spy, "x", "")


def test_user_turn_prompt(tiny):
    lm = tiny("llama")
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    p = user_turn_prompt(lm.tokenizer, msgs, "I")
    assert p.text.endswith("Hello!<|im_end|>\n<|im_start|>user\nI")
    assert [s[0] for s in p.spans] == ["user", "assistant"]


def test_persona_sample(tiny):
    spy = Spy(tiny("llama"))
    out = persona_sample(spy, role="user", n=2, max_new_tokens=3)
    assert len(out) == 2 and spy.calls[-1][0][0].text.endswith("<|im_start|>user\n")
    persona_sample(spy, "Once upon a time the assistant", role="narrator", n=1, max_new_tokens=3)
    assert spy.calls[-1][1]["chat"] is False and spy.calls[-1][0] == ["Once upon a time the assistant"]
    with pytest.raises(ValueError, match="assistant turn"):
        persona_sample(spy, [{"role": "user", "content": "hi"}], role="user")
    with pytest.raises(ValueError, match="role"):
        persona_sample(spy, "x", role="critic")
    assert len(sample(spy, "Hi", n=2, max_new_tokens=2)) == 2
