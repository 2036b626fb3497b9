"""mindscope.judges: judges and the chat client, directly above ``core`` (evals, features and the
protocols all use them).

- ``Judge`` protocol: ``judge.grade(prompt, response, rubric) -> Verdict``; ``RuleJudge``
  (offline, deterministic), ``LMJudge`` (an in-process ``ms.LM``), ``HTTPJudge`` (any
  OpenAI-compatible endpoint), built by ``make_judge(spec)``.
- Free-text backends for explainers and scorers: ``FeatureJudge`` / ``OfflineJudge``, built by
  ``make_feature_judge(spec)``; ``ask(prompt) -> TextReply`` never raises.
- ``judge_kind(spec, allowed)``: the one judge-spec parser (``rule``, ``rule-lenient``,
  ``offline``, ``lm``, an ``http(s)://`` URL).
- ``ChatClient``: a stdlib client for chat-completions endpoints, with retries.

>>> from mindscope.judges import RuleJudge
>>> RuleJudge().grade("2+2?", "Exact Answer: 4\\nConfidence: 90%", "4").correct
True
"""
from ._http import ChatClient, ChatError, ClientStats
from ._judge import (CRITERIA_PROMPT, JUDGE_PROMPT, HTTPJudge, Judge, LMJudge, Rubric, RuleJudge,
                     Verdict, judge_kind, judge_prompt, make_judge, parse_verdict_text)
from ._parse import ParsedResponse, parse_confidence, parse_response
from ._rules import answers_match, choice_letter, normalize, parse_choices
from ._text import FeatureJudge, OfflineJudge, TextReply, make_feature_judge

__all__ = ["Judge", "Verdict", "Rubric", "RuleJudge", "LMJudge", "HTTPJudge", "make_judge",
           "judge_kind", "JUDGE_PROMPT", "CRITERIA_PROMPT", "judge_prompt", "parse_verdict_text",
           "FeatureJudge", "OfflineJudge", "TextReply", "make_feature_judge", "ChatClient",
           "ChatError", "ClientStats", "ParsedResponse", "parse_response", "parse_confidence",
           "normalize", "answers_match", "choice_letter", "parse_choices"]
