"""The official HLE response format: the system prompts.

Source of the prompts: github.com/centerforaisafety/hle, ``hle_eval/run_model_predictions.py``.
The first release had two system prompts, ``SYSTEM_EXACT_ANSWER`` and ``SYSTEM_MC``, chosen by
``answer_type`` (its check compared against ``'exact_match'`` while the data says
``'exactMatch'``, so in practice every item got ``SYSTEM_MC``); the current release sends one
``SYSTEM_PROMPT`` (identical to ``SYSTEM_MC``) for every item. ``prompt_style="per_type"``
(default, as in the HLE paper) uses the two prompts; ``"single"`` reproduces the current repo.

The reply parser (``parse_response``) lives in ``mindscope.judges`` (the rule judge needs it).
"""
from __future__ import annotations

from ._items import Item

SYSTEM_EXACT_ANSWER = (
    "Your response should be in the following format:\n"
    "Explanation: {your explanation for your final answer}\n"
    "Exact Answer: {your succinct, final answer}\n"
    "Confidence: {your confidence score between 0% and 100% for your answer}"
)
SYSTEM_MC = (
    "Your response should be in the following format:\n"
    "Explanation: {your explanation for your answer choice}\n"
    "Answer: {your chosen answer}\n"
    "Confidence: {your confidence score between 0% and 100% for your answer}"
)
PROMPT_STYLES = ("per_type", "single")


def system_prompt(item: Item, style: str = "per_type") -> str:
    """The official system prompt for ``item`` (see module docstring for the two styles)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {style!r}")
    if style == "single" or item.answer_type == "multipleChoice":
        return SYSTEM_MC
    return SYSTEM_EXACT_ANSWER


def format_messages(item: Item, style: str = "per_type") -> list[dict]:
    """Chat messages for one item: the official system prompt, then the question as the user."""
    return [{"role": "system", "content": system_prompt(item, style)},
            {"role": "user", "content": item.question}]
