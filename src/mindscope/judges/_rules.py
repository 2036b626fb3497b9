"""Deterministic answer matching for the offline rule-based judge.

This is a DEVIATION from the official HLE grading (an LLM judge for every item): exact-match
answers are compared after normalisation (and numerically with a small relative tolerance),
multiple-choice answers by their letter (or by the text of one listed choice). Stricter than a
judge on paraphrases ("Shakespeare" vs "William Shakespeare" is wrong here).

>>> normalize("  The **Newton**. ")
'newton'
>>> choice_letter("(B) 3x^2", {"A": "x^2", "B": "3x^2"})
'B'
>>> answers_match("1,024", "1024")
True
"""
from __future__ import annotations

import math
import re
import unicodedata
from typing import Optional

_CHOICE_RE = re.compile(r"^\s*\(?([A-Z])[\).:]\s+(.+?)\s*$", re.MULTILINE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_BOXED = re.compile(r"\\boxed\{(.*)\}")
_NUM = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def normalize(s: Optional[str]) -> str:
    """Lowercase, strip markdown/LaTeX wrappers, articles, punctuation and extra spaces."""
    if not s:
        return ""
    s = unicodedata.normalize("NFKC", s)
    m = _BOXED.search(s)
    if m:
        s = m.group(1)
    s = s.replace("$", "").replace("\\text", "").replace("**", "").replace("`", "")
    s = s.lower().strip()
    s = _ARTICLES.sub(" ", s)
    s = re.sub(r"[^\w\s\.\-\+/\^\*=<>%]", " ", s)     # keep math-bearing symbols
    s = re.sub(r"\s+", " ", s).strip()
    return s.rstrip(".").strip()


def _as_number(s: str) -> Optional[float]:
    t = s.replace(",", "").replace(" ", "").rstrip("%")
    if _NUM.match(t):
        try:
            return float(t)
        except ValueError:
            return None
    return None


def answers_match(response_answer: Optional[str], reference: str, rel_tol: float = 1e-3) -> bool:
    """Exact-match rule: normalised strings equal, or both numbers within ``rel_tol``."""
    a, r = normalize(response_answer), normalize(reference)
    if not a:
        return False
    if a == r:
        return True
    na, nr = _as_number(a), _as_number(r)
    if na is not None and nr is not None:
        return math.isclose(na, nr, rel_tol=rel_tol, abs_tol=1e-12)
    return False


def parse_choices(question: str) -> dict[str, str]:
    """Listed options of a multiple-choice question: lines like ``A. text`` or ``(B) text``."""
    tail = question.split("Answer Choices:", 1)[-1]
    return {m.group(1): m.group(2) for m in _CHOICE_RE.finditer(tail)}


def choice_letter(answer: Optional[str], choices: Optional[dict[str, str]] = None) -> Optional[str]:
    """The letter a multiple-choice answer names, or None.

    Accepts ``B``, ``B.``, ``(B)``, ``B) text``, ``**B**``, ``Option B``, ``The answer is B``, or
    the exact text of one listed choice.
    """
    if not answer:
        return None
    s = answer.strip().replace("**", "").strip()
    s = re.sub(r"^(the\s+)?(correct\s+)?(answer|option|choice)\s*(is|:)?\s*", "", s, flags=re.IGNORECASE)
    m = re.match(r"^\(?([A-Z])\)?(?:$|[\.\):,])", s)
    if m and (not choices or m.group(1) in choices):
        return m.group(1)
    m = re.match(r"^([A-Z])\s+[-–:]?\s*(.+)$", s)   # "C Nitrogen" / "C - Nitrogen": text must agree
    if m and choices and normalize(choices.get(m.group(1))) == normalize(m.group(2)):
        return m.group(1)
    if choices:
        ns = normalize(s)
        hits = [k for k, v in choices.items() if normalize(v) == ns]
        if len(hits) == 1:
            return hits[0]
    return None


def fallback_answer(response: str, answer_type: str, choices: Optional[dict[str, str]] = None) -> Optional[str]:
    """Lenient extraction when a reply has no ``Answer:`` line (``RuleJudge(lenient=True)``).

    Multiple choice: the option letter that opens the reply (``B. 7``), unless the reply lists
    two or more options (an echo of the choices is not an answer). Exact match: the last
    non-empty line of the reply (the caller then looks for the reference inside it).
    """
    lines = [ln.strip() for ln in (response or "").splitlines() if ln.strip()]
    if not lines:
        return None
    if answer_type == "multipleChoice":
        listed = {m.group(1) for ln in lines if (m := re.match(r"^\(?([A-Z])[\).:]\s", ln))}
        if len(listed) >= 2:
            return None
        return choice_letter(lines[0].split()[0], choices)
    return lines[-1]


def contains_answer(text: Optional[str], reference: str) -> bool:
    """The normalised reference occurs in the text as whole words (numbers compared as tokens)."""
    t, r = normalize(text), normalize(reference)
    if not t or not r:
        return False
    return re.search(rf"(?<![\w.]){re.escape(r)}(?![\w]|\.\d)", t) is not None
