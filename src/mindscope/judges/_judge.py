"""Judges: ``judge.grade(prompt, response, rubric) -> Verdict``, with three backends.

* ``RuleJudge`` - deterministic, offline, the default. Letter match for multiple choice,
  normalised / numeric match for exact answers. A DEVIATION from official HLE grading (an LLM
  judge for every item); results say ``judge = "rule"``.
* ``LMJudge`` - an in-process ``ms.LM`` asked the official judge prompt.
* ``HTTPJudge`` - any OpenAI-compatible endpoint (``http://127.0.0.1:8000/v1``) asked the
  official judge prompt with a structured (JSON schema) verdict.

A judge never raises on a bad reply: it returns a ``Verdict`` with ``correct=None`` and an
``error`` kind (rate_limited, timeout, malformed, http_error, connection), and counts it in
``judge.stats``. ``make_judge("rule" | "lm" | "http://...")`` builds one from a spec
(``judge_kind`` is the one spec parser, shared with ``make_feature_judge``).

>>> j = RuleJudge()
>>> v = j.grade("What is 6*7?", "Explanation: ...\\nExact Answer: 42\\nConfidence: 90%", "42")
>>> v.correct, v.extracted_answer, v.confidence, v.judge
(True, '42', 90.0, 'rule')
"""
from __future__ import annotations

import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence, Union

from tqdm.auto import tqdm

from ._http import ChatClient, ChatError
from ._parse import parse_response
from ._rules import answers_match, choice_letter, contains_answer, fallback_answer, parse_choices

log = logging.getLogger(__name__)

# Official judge prompt, verbatim from github.com/centerforaisafety/hle hle_eval/run_judge_results.py
JUDGE_PROMPT = r"""Judge whether the following [response] to [question] is correct or not based on the precise and unambiguous [correct_answer] below.

[question]: {question}

[response]: {response}

Your judgement must be in the format and criteria specified below:

extracted_final_answer: The final exact answer extracted from the [response]. Put the extracted answer as 'None' if there is no exact, final answer to extract from the response.

[correct_answer]: {correct_answer}

reasoning: Explain why the extracted_final_answer is correct or incorrect based on [correct_answer], focusing only on if there are meaningful differences between [correct_answer] and the extracted_final_answer. Do not comment on any background to the problem, do not attempt to solve the problem, do not argue for any answer different than [correct_answer], focus only on whether the answers match.

correct: Answer 'yes' if extracted_final_answer matches the [correct_answer] given above, or is within a small margin of error for numerical problems. Answer 'no' otherwise, i.e. if there if there is any inconsistency, ambiguity, non-equivalency, or if the extracted answer is incorrect.


confidence: The extracted confidence score between 0|\%| and 100|\%| from [response]. Put 100 if there is no confidence score available."""

# mindscope's own prompt for free-text criteria (not an HLE prompt), same verdict fields.
CRITERIA_PROMPT = """Judge whether the following [response] to [prompt] meets the [criteria] below.

[prompt]: {question}

[response]: {response}

[criteria]: {criteria}

Your judgement must be in the format specified below:

extracted_final_answer: The part of the [response] the criteria are about. Put 'None' if there is none.

reasoning: Explain briefly why the response does or does not meet the [criteria].

correct: Answer 'yes' if the response meets the [criteria], 'no' otherwise.

confidence: The extracted confidence score between 0 and 100 from [response]. Put 100 if there is no confidence score available."""

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"extracted_final_answer": {"type": "string"}, "reasoning": {"type": "string"},
                   "correct": {"type": "string", "enum": ["yes", "no"]},
                   "confidence": {"type": "integer"}},
    "required": ["extracted_final_answer", "reasoning", "correct", "confidence"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Rubric:
    """What a response is graded against. A plain string means ``Rubric(answer=string)``."""

    answer: Optional[str] = None
    """Reference answer (a letter for multiple choice)."""
    answer_type: str = "exactMatch"
    """``exactMatch`` or ``multipleChoice`` (HLE names)."""
    criteria: Optional[str] = None
    """Free-text criteria instead of a reference answer (LLM judges only)."""

    def __post_init__(self) -> None:
        if self.answer is None and self.criteria is None:
            raise ValueError("Rubric needs an answer or criteria")


@dataclass
class Verdict:
    """A judge's decision on one response."""

    correct: Optional[bool]
    """True/False, or None when the judge could not decide (see ``error``)."""
    judge: str
    """Which judge produced it, e.g. ``rule``, ``lm:smollm2-135m-instruct``, ``http:gpt-4o@host``."""
    extracted_answer: Optional[str] = None
    reasoning: str = ""
    confidence: Optional[float] = None
    """Confidence (percent) read from the response, by the judge."""
    error: Optional[str] = None
    """None, or rate_limited | timeout | malformed | http_error | connection | unsupported."""
    detail: str = ""
    attempts: int = 1
    raw: Optional[str] = None
    """The judge's raw reply (LLM judges)."""

    @property
    def ok(self) -> bool:
        return self.correct is not None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Verdict":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


def _rubric(r: Union[str, Rubric]) -> Rubric:
    return r if isinstance(r, Rubric) else Rubric(answer=str(r))


class Judge:
    """Base class. Subclasses implement ``_grade``; ``grade`` adds counting and never raises."""

    name = "judge"
    concurrent = False
    """True when ``grade_many`` should use a thread pool (network backends)."""

    def __init__(self) -> None:
        self.stats: dict[str, int] = {"graded": 0, "failed": 0}
        self._lock = threading.Lock()

    def describe(self) -> dict:
        """Provenance recorded in results.json."""
        return {"name": self.name, "backend": type(self).__name__}

    def _grade(self, prompt: str, response: str, rubric: Rubric) -> Verdict:
        raise NotImplementedError

    def grade(self, prompt: str, response: str, rubric: Union[str, Rubric]) -> Verdict:
        try:
            v = self._grade(prompt, response or "", _rubric(rubric))
        except Exception as e:  # a judge must never kill a long run
            log.warning("judge %s failed: %s", self.name, e)
            v = Verdict(correct=None, judge=self.name, error="exception", detail=repr(e)[:500])
        with self._lock:
            self.stats["graded" if v.ok else "failed"] += 1
            if v.error:
                self.stats[v.error] = self.stats.get(v.error, 0) + 1
        return v

    def grade_many(self, requests: Sequence[tuple[str, str, Union[str, Rubric]]], *,
                   workers: int = 8, progress: bool = True) -> list[Verdict]:
        """Grade ``(prompt, response, rubric)`` triples, in order; threads if ``concurrent``."""
        bar = tqdm(total=len(requests), desc=f"judge {self.name}", disable=not progress)
        if not self.concurrent or workers <= 1:
            out = []
            for p, r, rb in requests:
                out.append(self.grade(p, r, rb))
                bar.update()
        else:
            with ThreadPoolExecutor(workers) as ex:
                futs = [ex.submit(self.grade, p, r, rb) for p, r, rb in requests]
                for f in futs:
                    f.add_done_callback(lambda _: bar.update())
                out = [f.result() for f in futs]
        bar.close()
        return out


class RuleJudge(Judge):
    """Offline deterministic grading (deviation from the official LLM judge; see module doc)."""

    name = "rule"

    def __init__(self, rel_tol: float = 1e-3, lenient: bool = False):
        """``lenient``: when a reply has no ``Answer:`` line, still grade it - multiple choice by
        the option letter that opens it, exact match by the reference occurring (as whole words)
        in its last line. Off by default: the HLE format requires the answer line."""
        super().__init__()
        self.rel_tol, self.lenient = rel_tol, lenient
        if lenient:
            self.name = "rule-lenient"

    def describe(self) -> dict:
        return {**super().describe(), "rel_tol": self.rel_tol, "lenient": self.lenient,
                "deviation": "rule-based match instead of the official LLM judge"}

    def _grade(self, prompt: str, response: str, rubric: Rubric) -> Verdict:
        if rubric.answer is None:
            return Verdict(correct=None, judge=self.name, error="unsupported",
                           detail="the rule judge needs a reference answer, not free-text criteria")
        p = parse_response(response)
        conf = p.confidence
        if p.answer is None:
            if self.lenient and rubric.answer_type == "multipleChoice":
                choices = parse_choices(prompt)
                got = fallback_answer(response, rubric.answer_type, choices)
                ref = choice_letter(rubric.answer, choices) or rubric.answer.strip()
                return Verdict(correct=got is not None and got == ref, judge=self.name,
                               extracted_answer=got, confidence=conf,
                               reasoning=f"lenient: opening letter {got!r} vs {ref!r}")
            if self.lenient:
                last = fallback_answer(response, rubric.answer_type)
                ok = contains_answer(last, rubric.answer)
                return Verdict(correct=ok, judge=self.name, extracted_answer=last, confidence=conf,
                               reasoning="lenient: reference in the last line" if ok else
                               "lenient: reference not in the last line")
            return Verdict(correct=False, judge=self.name, extracted_answer=None, confidence=conf,
                           reasoning="no final answer line in the response")
        if rubric.answer_type == "multipleChoice":
            choices = parse_choices(prompt)
            got = choice_letter(p.answer, choices)
            ref = choice_letter(rubric.answer, choices) or rubric.answer.strip()
            ok = got is not None and got == ref
            why = f"letter {got!r} vs reference {ref!r}"
        else:
            ok = answers_match(p.answer, rubric.answer, self.rel_tol)
            why = "normalised match" if ok else "no normalised/numeric match"
        return Verdict(correct=ok, judge=self.name, extracted_answer=p.answer, confidence=conf,
                       reasoning=why)


_FIELD_RE = re.compile(r"^[\*\s#]*(extracted_final_answer|reasoning|correct|confidence)[\*\s]*:\s*(.*)$",
                       re.IGNORECASE | re.MULTILINE)


def parse_verdict_text(text: str) -> Optional[dict]:
    """Read the four verdict fields from a judge reply: JSON (maybe in a code fence) or
    ``field: value`` lines. Returns None when ``correct`` is not a clear yes/no."""
    d: dict[str, Any] = {}
    m = re.search(r"\{.*\}", text or "", re.DOTALL)
    if m:
        try:
            j = json.loads(m.group(0))
            if isinstance(j, dict):
                d = {k.lower(): v for k, v in j.items()}
        except json.JSONDecodeError:
            d = {}
    if "correct" not in d:
        for fm in _FIELD_RE.finditer(text or ""):
            d.setdefault(fm.group(1).lower(), fm.group(2).strip())
    c = str(d.get("correct", "")).strip().strip("'\"*.").lower()
    if c not in ("yes", "no", "true", "false"):
        return None
    conf = d.get("confidence")
    try:
        conf = float(str(conf).strip().rstrip("%")) if conf is not None else None
    except ValueError:
        conf = None
    ans = d.get("extracted_final_answer")
    ans = None if ans is None or str(ans).strip() in ("", "None") else str(ans).strip()
    return {"correct": c in ("yes", "true"), "extracted_answer": ans,
            "reasoning": str(d.get("reasoning", "")), "confidence": conf}


def judge_prompt(prompt: str, response: str, rubric: Rubric) -> str:
    """The text an LLM judge sees: the official HLE prompt, or the criteria prompt."""
    if rubric.criteria is not None:
        return CRITERIA_PROMPT.format(question=prompt, response=response, criteria=rubric.criteria)
    return JUDGE_PROMPT.format(question=prompt, response=response, correct_answer=rubric.answer)


class _LLMJudge(Judge):
    def _ask(self, text: str) -> str:
        raise NotImplementedError

    def ask(self, text: str) -> str:
        """Send free text to the judge model and return its raw reply (raises on failure)."""
        return self._ask(text)

    def _grade(self, prompt: str, response: str, rubric: Rubric) -> Verdict:
        attempts = 1
        try:
            raw = self._ask(judge_prompt(prompt, response, rubric))
        except ChatError as e:
            return Verdict(correct=None, judge=self.name, error=e.kind, detail=str(e)[:500],
                           attempts=e.attempts)
        d = parse_verdict_text(raw)
        if d is None:
            return Verdict(correct=None, judge=self.name, error="malformed", raw=raw[:4000],
                           detail="no yes/no 'correct' field in the judge reply", attempts=attempts)
        return Verdict(judge=self.name, raw=raw[:4000], attempts=attempts, **d)


class HTTPJudge(_LLMJudge):
    """Official judge prompt sent to an OpenAI-compatible endpoint (structured verdict).

    ``structured=True`` asks for ``response_format`` json_schema; a server that rejects it
    (HTTP 400) is asked again without it, and the text reply is parsed.
    """

    concurrent = True

    def __init__(self, base_url: str, model: str = "default", *, api_key: Optional[str] = None,
                 timeout: float = 120.0, max_retries: int = 5, backoff: float = 1.0,
                 max_tokens: int = 4096, structured: bool = True):
        super().__init__()
        self.client = ChatClient(base_url, model, api_key=api_key, timeout=timeout,
                                 max_retries=max_retries, backoff=backoff)
        self.max_tokens, self.structured = max_tokens, structured
        host = base_url.split("://", 1)[-1].split("/", 1)[0]
        self.name = f"http:{model}@{host}"

    def describe(self) -> dict:
        return {**super().describe(), **self.client.describe(), "structured": self.structured,
                "prompt": "official HLE judge prompt", "client_stats": self.client.stats.to_dict()}

    def _ask(self, text: str) -> str:
        msgs = [{"role": "user", "content": text}]
        params: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": 0.0}
        if self.structured:
            fmt = {"type": "json_schema", "json_schema": {"name": "ExtractedAnswer", "strict": True,
                                                          "schema": VERDICT_SCHEMA}}
            try:
                return self.client.chat(msgs, response_format=fmt, **params)
            except ChatError as e:
                if e.kind != "http_error" or "HTTP 400" not in str(e):
                    raise
                log.warning("%s rejected response_format; falling back to text verdicts", self.name)
                self.structured = False
        return self.client.chat(msgs, **params)


class LMJudge(_LLMJudge):
    """Official judge prompt answered by an in-process ``ms.LM`` (greedy)."""

    def __init__(self, lm: Any, max_new_tokens: int = 256):
        super().__init__()
        self.lm, self.max_new_tokens = lm, max_new_tokens
        self.name = f"lm:{getattr(lm, 'name', 'model')}"
        self._gen_lock = threading.Lock()

    def describe(self) -> dict:
        return {**super().describe(), "model": getattr(self.lm, "name", None),
                "max_new_tokens": self.max_new_tokens, "prompt": "official HLE judge prompt"}

    def _ask(self, text: str) -> str:
        with self._gen_lock:
            out = self.lm.generate([text], max_new_tokens=self.max_new_tokens, chat=True,
                                   temperature=0.0)
        return out[0].text


def judge_kind(spec: str, allowed: Sequence[str]) -> str:
    """The one judge-spec parser: ``"rule"`` | ``"rule-lenient"`` | ``"offline"`` | ``"lm"`` |
    ``"http(s)://host:port/v1"`` -> its kind (``"http"`` for a URL); ValueError naming the
    choices when the kind is not in ``allowed``.

    >>> judge_kind("http://127.0.0.1:8000/v1", ("rule", "lm", "http"))
    'http'
    """
    kind = "http" if isinstance(spec, str) and spec.startswith(("http://", "https://")) else spec
    if kind not in allowed:
        names = [repr(a) for a in allowed if a != "http"]
        if "http" in allowed:
            names.append("an http(s)://host:port/v1 URL")
        use = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        raise ValueError(f"unknown judge {spec!r}; use {use}")
    return kind


def make_judge(spec: Union[str, Judge, None] = "rule", *, lm: Any = None, model: str = "default",
               **kw: Any) -> Judge:
    """``"rule"`` (default) | ``"rule-lenient"`` | ``"lm"`` (needs ``lm``) | ``"http://host:port/v1"`` (``model`` names
    the judge model on that server) | an existing Judge."""
    if isinstance(spec, Judge):
        return spec
    kind = judge_kind("rule" if spec is None else spec, ("rule", "rule-lenient", "lm", "http"))
    if kind == "rule":
        return RuleJudge(**kw)
    if kind == "rule-lenient":
        return RuleJudge(lenient=True, **kw)
    if kind == "lm":
        if lm is None:
            raise ValueError("judge 'lm' needs an ms.LM (lm=...)")
        return LMJudge(lm, **kw)
    return HTTPJudge(spec, model, **kw)
