"""mindscope.evals: benchmark runs with judge grading and calibration (HLE format).

>>> from mindscope import evals
>>> items = evals.load_items()                    # the bundled 40-item original sample
>>> j = evals.RuleJudge()                         # offline default (deviation: not an LLM judge)
>>> j.grade("2+2?", "Exact Answer: 4\\nConfidence: 90%", "4").correct
True
"""
# judges and the chat client live in mindscope.judges (re-exported here for the evals API)
from ..judges import (JUDGE_PROMPT, ChatClient, ChatError, ClientStats, HTTPJudge, Judge, LMJudge,
                      ParsedResponse, Rubric, RuleJudge, Verdict, answers_match, choice_letter,
                      judge_prompt, make_judge, normalize, parse_choices, parse_confidence,
                      parse_response, parse_verdict_text)
from ._compare import build_interventions, compare_variants, comparison_table, load_direction, parse_spec
from ._items import ANSWER_TYPES, SAMPLE_PATH, Item, ItemSet, load_items
from ._metrics import (CalibrationError, accuracy, bin_edges, calibration_error, per_category,
                       reliability_bins, reliability_diagram)
from ._prompts import SYSTEM_EXACT_ANSWER, SYSTEM_MC, format_messages, system_prompt
from ._responders import HTTPResponder, LMResponder, Reply, Responder, StaticResponder
from ._runner import EvalConfig, EvalResult, compute_metrics, confidence_of, run_eval
from ._store import RunStore, write_json_atomic

__all__ = [
    # items and prompts
    "Item", "ItemSet", "load_items", "SAMPLE_PATH", "ANSWER_TYPES", "SYSTEM_EXACT_ANSWER",
    "SYSTEM_MC", "system_prompt", "format_messages", "ParsedResponse", "parse_response",
    "parse_confidence",
    # judges
    "Judge", "Verdict", "Rubric", "RuleJudge", "LMJudge", "HTTPJudge", "make_judge",
    "JUDGE_PROMPT", "judge_prompt", "parse_verdict_text", "ChatClient", "ChatError", "ClientStats",
    "normalize", "answers_match", "choice_letter", "parse_choices",
    # metrics
    "accuracy", "calibration_error", "CalibrationError", "bin_edges", "per_category",
    "reliability_bins", "reliability_diagram",
    # runs
    "EvalConfig", "EvalResult", "run_eval", "compute_metrics", "confidence_of", "Responder",
    "LMResponder", "HTTPResponder", "StaticResponder", "Reply", "RunStore", "write_json_atomic",
    "compare_variants", "comparison_table", "build_interventions", "parse_spec", "load_direction",
]

# Old names, kept importable (not in __all__: public names are unique across mindscope).
load_vector = load_direction  # core.load_vector returns a Vector; this one a tensor
