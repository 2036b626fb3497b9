"""Chat helpers: render a conversation with the model's chat template and keep where each
turn's content sits in the text (character spans; token spans follow from the offsets).

A tokenizer without a chat template (a base model) gets a plain transcript instead, the one
place every protocol's prompts fall back to: an optional ``System:`` line, then ``User: ...`` /
``Assistant: ...`` lines, ending ``Assistant:`` when a reply is asked for (generation stops a
reply where it opens another ``User:``, ``Assistant:`` or ``System:`` turn). ``chat_format(tokenizer)`` says which was used;
runs record it.

>>> # p = lm.chat([{"role": "user", "content": "Hi"}], prefill="Sure")
>>> # p.text.endswith("Sure"), [r for r, _, _ in p.spans] == ["user", "assistant"]
>>> class Base: bos_token = chat_template = None
>>> render_chat(Base(), [{"role": "user", "content": "Hi"}], system="Be brief.").text
'System: Be brief.\\nUser: Hi\\nAssistant:'
"""
from __future__ import annotations

from dataclasses import dataclass, field

CHAT_TEMPLATE = "chat template"
"""``chat_format`` of a tokenizer that has a chat template."""
PLAIN_TRANSCRIPT = "plain transcript (no chat template)"
"""``chat_format`` of a tokenizer without one: prompts are a plain User/Assistant transcript."""
TURN_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
"""The speaker names of a plain transcript (other roles are capitalised)."""
TURN_STOPS = ("\nUser:", "\nAssistant:", "\nSystem:")
"""Where a reply generated on a plain transcript ends: the model opening another turn (base
models also loop on ``Assistant:`` lines, and after a prompt with a ``System:`` line they open
``System:`` lines of their own)."""


@dataclass
class ChatPrompt:
    """A rendered chat prompt. ``spans``: (role, char_start, char_end) of each turn's content
    (and of the assistant prefill, if any)."""

    text: str
    spans: list[tuple[str, int, int]] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    prefill: str | None = None
    format: str = CHAT_TEMPLATE
    """How it was rendered: ``CHAT_TEMPLATE`` or ``PLAIN_TRANSCRIPT``."""

    def span_of(self, role: str, index: int = -1) -> tuple[int, int]:
        hits = [(a, b) for r, a, b in self.spans if r == role]
        if not hits:
            raise ValueError(f"no {role!r} turn in this prompt")
        return hits[index]


def _validate(messages) -> list[dict]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content'; got {m!r}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i} content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def render_chat(tokenizer, messages, prefill: str | None = None,
                add_generation_prompt: bool = True, system: str | None = None) -> ChatPrompt:
    """Render with the tokenizer's chat template. With ``prefill`` the assistant turn is opened
    and the prefill text appended (the model continues it)."""
    msgs = _validate(messages)
    if system is not None:
        msgs = [{"role": "system", "content": system}] + [m for m in msgs if m["role"] != "system"]
    gen = add_generation_prompt and (not msgs or msgs[-1]["role"] != "assistant")
    if chat_format(tokenizer) == PLAIN_TRANSCRIPT:
        return _transcript(tokenizer, msgs, prefill, gen)
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    if prefill:
        text = text + prefill
    spans, cursor = [], 0
    for m in msgs:
        if not m["content"]:
            continue
        pos = text.find(m["content"], cursor)
        if pos < 0:  # templates may strip content; fall back to a stripped match
            pos = text.find(m["content"].strip(), cursor)
            if pos < 0:
                continue
            spans.append((m["role"], pos, pos + len(m["content"].strip())))
        else:
            spans.append((m["role"], pos, pos + len(m["content"])))
        cursor = spans[-1][2]
    if prefill:
        spans.append(("assistant", len(text) - len(prefill), len(text)))
    return ChatPrompt(text=text, spans=spans, messages=msgs, prefill=prefill)


def chat_format(tokenizer) -> str:
    """``CHAT_TEMPLATE`` if ``tokenizer`` has a chat template, else ``PLAIN_TRANSCRIPT``."""
    return CHAT_TEMPLATE if getattr(tokenizer, "chat_template", None) else PLAIN_TRANSCRIPT


def as_reply(tokenizer, text: str) -> str:
    """``text`` as it follows the generation prompt when appended to it (a prefill, an
    off-policy response tokenized on its own): a plain transcript ends ``Assistant:``, so the
    reply gets a leading space there (as the model's own first token carries one); a chat
    template's prompt ends its own way and ``text`` is kept as is."""
    if chat_format(tokenizer) == PLAIN_TRANSCRIPT and text and not text[0].isspace():
        return " " + text
    return text


def _bos_text(tokenizer) -> str:
    """The BOS a plain transcript starts with: the tokenizer's BOS where it puts one before plain
    text (Gemma does, SmolLM2 does not). Chat prompts are tokenized without special tokens, so
    the rendered text must carry it, as a chat template's text does."""
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or not callable(tokenizer):
        return ""
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == tokenizer.bos_token_id else ""


def _transcript(tokenizer, msgs: list[dict], prefill: str | None, gen: bool) -> ChatPrompt:
    """BOS (where the tokenizer adds one), then one line per turn (``Role: content``), then
    ``Assistant:`` (and the prefill) when a reply is asked for; content spans as in a chat."""
    text, spans = _bos_text(tokenizer), []
    for m in msgs:
        text += f"{TURN_NAMES.get(m['role'], m['role'].capitalize())}: "
        if m["content"]:
            spans.append((m["role"], len(text), len(text) + len(m["content"])))
        text += m["content"] + "\n"
    if gen:
        text += "Assistant:"
        if prefill:  # the space the model's own first token would carry (not in the span)
            text += as_reply(tokenizer, prefill)[:-len(prefill)]
    if prefill:
        spans.append(("assistant", len(text), len(text) + len(prefill)))
        text += prefill
    return ChatPrompt(text=text, spans=spans, messages=msgs, prefill=prefill,
                      format=PLAIN_TRANSCRIPT)
