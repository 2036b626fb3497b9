"""The audit tools on a model without a chat template: conversations render as core's plain
transcript (issue 24), for sampling, prefill attacks, user-turn sampling and the training labels."""
from mindscope.audit import prefill_attack, user_turn_prompt
from mindscope.audit._train import encode_chat
from mindscope.testing import tiny_base_lm

BOS = "<|endoftext|>"
MSGS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_user_turn_prompt_opens_a_plain_user_line():
    tok = tiny_base_lm().tokenizer
    p = user_turn_prompt(tok, MSGS, "I")
    assert p.text == f"{BOS}User: Hi\nAssistant: Hello!\nUser: I"
    assert [(r, p.text[a:b]) for r, a, b in p.spans] == [("user", "Hi"), ("assistant", "Hello!")]


def test_training_labels_cover_the_reply_and_its_line_end():
    tok = tiny_base_lm().tokenizer
    ids, labels = encode_chat(tok, MSGS, 200)
    assert ids == tok(f"{BOS}User: Hi\nAssistant: Hello!\n", add_special_tokens=False)["input_ids"]
    kept = [t for t in labels if t != -100]
    assert tok.decode(kept) == "Hello!\n" and len(ids) == len(labels)


def test_prefill_attack_renders_the_prefill_after_assistant():
    lm = tiny_base_lm()
    seen = []
    real = lm.generate

    def spy(prompts, **kw):
        seen.append(prompts[0].text)
        return real(prompts, **kw)

    lm.generate = spy
    out = prefill_attack(lm, "Hi", "My goal is", n=1, max_new_tokens=2)
    assert seen == [f"{BOS}User: Hi\nAssistant: My goal is"] and out[0]["prefill"] == "My goal is"
