"""A robust parser of the HLE reply format (``Explanation / (Exact) Answer / Confidence``), used
by the rule judge and by the evals runner.

>>> p = parse_response("Explanation: easy.\\nExact Answer: 42\\nConfidence: 85%")
>>> p.answer, p.confidence, p.answer_status, p.confidence_status
('42', 85.0, 'ok', 'ok')
>>> parse_response("I think it is 42.").answer_status
'missing'
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Optional

__all__ = ["ParsedResponse", "parse_response", "parse_confidence"]


@dataclass(frozen=True)
class ParsedResponse:
    """What could be read from a model's reply."""

    answer: Optional[str]
    """The final answer after ``Answer:`` / ``Exact Answer:`` (None when missing)."""
    confidence: Optional[float]
    """Confidence in percent, 0..100 (None when missing or malformed)."""
    answer_status: str
    """``ok`` | ``missing`` (no answer line, or an empty one)."""
    confidence_status: str
    """``ok`` | ``missing`` (no confidence line) | ``malformed`` (no number, or out of 0..100)."""

    def to_dict(self) -> dict:
        return asdict(self)


_MD = r"[\*_#>`\s]*"  # markdown decoration around a field name: **Answer:**, ### Answer, > Answer
_ANSWER_RE = re.compile(rf"^{_MD}(?:final\s+|exact\s+|final\s+exact\s+)?answer{_MD}[:：]\s*(.*)$",
                        re.IGNORECASE | re.MULTILINE)
_CONF_RE = re.compile(rf"^{_MD}confidence(?:\s+score)?{_MD}[:：]\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_NUM_RE = re.compile(r"[-+]?\d+(?:[.,]\d+)?")


def _clean(s: str) -> str:
    s = s.strip().strip("*_`").strip()
    return s


def parse_confidence(text: str) -> tuple[Optional[float], str]:
    """Read a confidence value from the text after ``Confidence:`` -> (percent, status).

    ``85%``, ``85``, ``85.5 %`` -> 85(.5); a bare fraction ``0.85`` (no ``%``) -> 85.
    Anything else, or a value outside 0..100, is ``malformed``.
    """
    m = _NUM_RE.search(text)
    if not m:
        return None, "malformed"
    v = float(m.group(0).replace(",", "."))
    rest = text[m.end():].lstrip()
    if not rest.startswith("%") and 0.0 < v <= 1.0 and "." in m.group(0).replace(",", "."):
        v *= 100.0
    if not 0.0 <= v <= 100.0:
        return None, "malformed"
    return v, "ok"


def parse_response(text: Optional[str]) -> ParsedResponse:
    """Parse ``Explanation / (Exact) Answer / Confidence`` from a reply; never raises.

    The LAST answer line wins (models sometimes restate a draft answer first). An answer line with
    nothing after the colon takes the next non-empty line. A confidence written on the answer line
    (``Answer: B Confidence: 80%``) is split off.
    """
    text = text or ""
    answer: Optional[str] = None
    matches = list(_ANSWER_RE.finditer(text))
    if matches:
        m = matches[-1]
        a = m.group(1)
        if not _clean(a):
            after = text[m.end():].lstrip("\n").split("\n", 1)[0]
            a = "" if _CONF_RE.match(after) else after
        a = re.split(r"\bconfidence\s*[:：]", a, maxsplit=1, flags=re.IGNORECASE)[0]
        answer = _clean(a) or None
    conf_matches = list(_CONF_RE.finditer(text))
    if conf_matches:
        confidence, c_status = parse_confidence(conf_matches[-1].group(1))
    else:
        inline = re.search(r"confidence\s*[:：]\s*(\S+)", text, re.IGNORECASE)
        confidence, c_status = parse_confidence(inline.group(1)) if inline else (None, "missing")
    return ParsedResponse(answer=answer, confidence=confidence,
                          answer_status="ok" if answer else "missing", confidence_status=c_status)
