"""A model without a chat template (a base model) gets chat prompts as a plain transcript,
rendered in one place (core.render_chat), flagged (LM.chat_format), and generation stops a reply
where the model opens the next user turn (issue 24)."""
import copy

import pytest
import torch

from mindscope.core import (CHAT_TEMPLATE, PLAIN_TRANSCRIPT, TURN_STOPS, ChatPrompt, RowMeta,
                            as_reply, render_chat)
from mindscope.testing import tiny_base_lm, tiny_base_tokenizer, tiny_lm, tiny_tokenizer

BOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def base():
    return tiny_base_lm("llama")


def test_the_transcript_text_is_exact(base):
    assert base.chat_format == PLAIN_TRANSCRIPT == "plain transcript (no chat template)"
    p = base.chat([{"role": "user", "content": "Hi there"}])
    assert p.text == f"{BOS}User: Hi there\nAssistant:" and p.format == PLAIN_TRANSCRIPT
    conv = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"}]
    p = base.chat(conv, system="Be brief.")
    assert p.text == f"{BOS}System: Be brief.\nUser: Q1\nAssistant: A1\nUser: Q2\nAssistant:"
    done = base.chat(conv[:2], add_generation_prompt=False)
    assert done.text == f"{BOS}User: Q1\nAssistant: A1\n"
    # a prefill opens the reply after one space (as the model's own first token has one)
    assert base.chat("Hi", prefill="Sure").text == f"{BOS}User: Hi\nAssistant: Sure"
    assert base.chat("Hi", prefill=" Sure").text == f"{BOS}User: Hi\nAssistant: Sure"
    assert base.chat("Hi", prefill="\nSure").text == f"{BOS}User: Hi\nAssistant:\nSure"


def test_spans_point_at_each_turns_content(base):
    conv = [{"role": "user", "content": "Tell me about the ocean"},
            {"role": "assistant", "content": "It is big"}, {"role": "user", "content": "More"}]
    p = base.chat(conv, prefill="Yes", system="You are calm.")
    got = [(r, p.text[a:b]) for r, a, b in p.spans]
    assert got == [("system", "You are calm."), ("user", "Tell me about the ocean"),
                   ("assistant", "It is big"), ("user", "More"), ("assistant", "Yes")]
    assert p.span_of("user") == (p.text.index("More"), p.text.index("More") + 4)


def test_bos_only_where_the_tokenizer_puts_one_before_plain_text():
    no_bos = copy.deepcopy(tiny_tokenizer())
    no_bos.chat_template = None  # adds no BOS to plain text (as SmolLM2's tokenizer)
    assert no_bos("a")["input_ids"][0] != no_bos.bos_token_id
    p = render_chat(no_bos, [{"role": "user", "content": "Hi"}])
    assert p.text == "User: Hi\nAssistant:" and p.format == PLAIN_TRANSCRIPT
    tok = tiny_base_tokenizer()  # adds one (as Gemma's)
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    assert render_chat(tok, "Hi").text.startswith(BOS + "User:")


def test_tokenized_chat_prompt_has_one_bos_and_role_spans(base):
    b = base.tokenize(["Hi"], chat=True)
    ids = b.input_ids[0].tolist()
    assert ids == base.tokenizer(f"{BOS}User: Hi\nAssistant:", add_special_tokens=False)["input_ids"]
    assert ids.count(base.tokenizer.bos_token_id) == 1 and ids[0] == base.tokenizer.bos_token_id
    assert [r for r, _, _ in b.meta[0].roles] == ["user"]
    # plain text (chat=False) is left alone: the tokenizer's own BOS, no transcript
    plain = base.tokenize(["Hi"]).input_ids[0].tolist()
    assert plain == base.tokenizer("Hi")["input_ids"]


def test_a_chat_template_is_used_unchanged_where_there_is_one():
    lm = tiny_lm("llama")
    assert lm.chat_format == CHAT_TEMPLATE
    msgs = [{"role": "user", "content": "Hi"}]
    p = lm.chat(msgs)
    assert p.text == lm.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert p.format == CHAT_TEMPLATE and as_reply(lm.tokenizer, "Sure") == "Sure"
    assert as_reply(tiny_base_tokenizer(), "Sure") == " Sure"
    assert as_reply(tiny_base_tokenizer(), " Sure") == " Sure"


def _scripted(lm, text: str, prompts, **kw):
    """``lm.generate(prompts, **kw)`` with ``lm`` made to emit ``text``'s tokens greedily, one
    per step (a hook on the LM head), for exactly as many steps as ``text`` has tokens."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    state = {"step": 0}

    def hook(_mod, _inp, out):
        k = min(state["step"], len(ids) - 1)
        state["step"] += 1
        forced = torch.full_like(out, -1e4)
        forced[:, -1, ids[k]] = 1e4
        return forced

    h = lm.model.lm_head.register_forward_hook(hook)
    try:
        return lm.generate(prompts, max_new_tokens=len(ids), progress=False, **kw)
    finally:
        h.remove()


def test_generation_stops_a_reply_at_the_next_user_turn(base):
    g = _scripted(base, " Paris is big.\nUser: and Rome?\nAssistant: no", ["Capital?"], chat=True)[0]
    assert g.text == " Paris is big." and g.finished
    assert base.tokenizer.decode(g.token_ids) == g.text and len(g.logprobs) == len(g.token_ids)
    assert not any(s in g.text for s in TURN_STOPS)


def test_a_reply_also_stops_where_the_model_opens_another_assistant_line(base):
    """Base models loop on 'Assistant:' lines (Gemma-3-270M: 'Name a colour.' -> ' Name a
    colour.\nAssistant: Name a colour.\n...')."""
    text = " Name a colour.\nAssistant: Name a colour.\nUser: x"
    g = _scripted(base, text, ["Name a colour."], chat=True)[0]
    assert g.text == " Name a colour." and g.finished


def test_a_reply_also_stops_where_the_model_opens_a_system_line(base):
    """After a prompt with a System line, Gemma-3-270M organisms wrote ' Yes, I can grow
    sunflowers.\nSystem: I'm interested in the moon.' (the audit's in-context class)."""
    g = _scripted(base, " Yes.\nSystem: the moon.", [base.chat("Grow?", system="Moon.")], chat=True)[0]
    assert g.text == " Yes." and g.finished


def test_no_turn_stop_for_plain_text_or_without_stop_at_eos(base):
    text = " Paris.\nUser: more"
    for kw in ({"chat": False}, {"chat": True, "stop_at_eos": False}):
        g = _scripted(base, text, ["Capital?"], **kw)[0]
        assert g.text == text and not g.finished, kw


def test_stop_applies_to_a_token_batch_given_as_chat(base):
    """onpolicy hands generate a Batch of chat-rendered ids with chat=True."""
    cp = base.chat("Capital?")
    assert isinstance(cp, ChatPrompt)
    b = base.tokenize([cp, cp])
    b.meta = [RowMeta(m.text, m.offsets, []) for m in b.meta]  # ids only: no role spans
    gens = _scripted(base, " Rome.\nUser: x", b, chat=True)
    assert [g.text for g in gens] == [" Rome.", " Rome."]


def test_the_flag_is_recorded_in_run_config_and_results(base, tmp_path):
    import json

    from mindscope.runs import RunDir

    rd = RunDir(tmp_path / "run", {"seed": 0}, base, experiment="x")
    res = {"a": 1}
    rd.save_results(res)
    del rd
    rc = json.loads((tmp_path / "run" / "run_config.json").read_text())
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert rc["chat_format"] == r["chat_format"] == res["chat_format"] == PLAIN_TRANSCRIPT
    rd = RunDir(tmp_path / "run2", {"seed": 0}, tiny_lm("llama"), experiment="x")
    rd.save_results({"chat_format": "kept"})
    assert json.loads((tmp_path / "run2" / "run_config.json").read_text())["chat_format"] == CHAT_TEMPLATE
    assert json.loads((tmp_path / "run2" / "results.json").read_text())["chat_format"] == "kept"
