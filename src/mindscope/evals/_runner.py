"""Run a benchmark: prompt -> respond -> parse -> judge -> per-item JSONL -> results.json.

Resumable: a rerun into the same folder skips items already graded, re-judges items whose
judge failed (keeping their response) and regenerates items whose generation failed.
Judging runs in a thread pool for network judges, overlapping with generation.

>>> from mindscope.evals import run_eval, StaticResponder, load_items     # doctest: +SKIP
>>> res = run_eval(StaticResponder({...}), load_items(), "rule", "runs/eval")  # doctest: +SKIP
>>> res.metrics["accuracy"], res.metrics["half_width"]                      # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from tqdm.auto import tqdm

from ..judges import Judge, Rubric, make_judge, parse_response
from ..runs import git_hash
from ..runs import versions as runs_versions
from ._items import Item, ItemSet
from ._metrics import CalibrationError, accuracy, calibration_error, per_category, reliability_diagram
from ._prompts import PROMPT_STYLES, format_messages
from ._responders import Reply, Responder
from ._store import RunStore

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Settings of one evaluation run (all recorded in results.json)."""

    prompt_style: str = "per_type"
    """``per_type`` (Exact Answer / Answer prompts by answer_type) or ``single`` (one prompt, as
    the current official repo)."""
    batch_size: int = 8
    """Items sent to the responder at a time (a generation batch for ``LMResponder``)."""
    workers: int = 8
    """Judge threads for network judges (1 = sequential)."""
    beta: int = 100
    """Calibration bin size (official: 100)."""
    corrected_calibration: bool = False
    """Headline ``calibration_error`` = corrected variant (all bins) instead of the official loop."""
    plot: bool = True
    """Write ``reliability.png``."""

    def __post_init__(self) -> None:
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {self.prompt_style!r}")
        if self.batch_size < 1 or self.workers < 1 or self.beta < 1:
            raise ValueError("batch_size, workers and beta must all be >= 1")


@dataclass
class EvalResult:
    """Metrics + per-item records of one run (also on disk in ``out``)."""

    metrics: dict
    records: list[dict]
    out: Optional[Path] = None
    provenance: dict = field(default_factory=dict)

    def summary_row(self) -> dict:
        m = self.metrics
        return {k: m.get(k) for k in ("n", "accuracy", "half_width", "calibration_error",
                                      "calibration_error_corrected", "answer_missing",
                                      "confidence_missing", "judge_errors", "generation_errors")}


def versions() -> dict:
    """``runs.versions()`` with the git commit of this checkout (None outside a repository)."""
    return {**runs_versions(), "git": git_hash()}


def _items_hash(items: Sequence[Item]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.id}\x00{it.question}\x00{it.answer}\x00{it.answer_type}\n".encode())
    return h.hexdigest()[:16]


def _record(item: Item, reply: Reply, judge: Judge, variant: str, responder: str) -> dict:
    parsed = parse_response(reply.text) if reply.text is not None else None
    if reply.text is None:
        verdict, status = None, "generation_error"
    else:
        verdict = judge.grade(item.question, reply.text, Rubric(item.answer, item.answer_type))
        status = "graded" if verdict.ok else "judge_error"
    return {"id": item.id, "variant": variant, "status": status, "category": item.category,
            "answer_type": item.answer_type, "reference": item.answer, "response": reply.text,
            "parsed": parsed.to_dict() if parsed else None,
            "verdict": verdict.to_dict() if verdict else None, "model": responder,
            "judge": verdict.judge if verdict else judge.name, "error": reply.error,
            "gen_seconds": round(reply.seconds, 4), "n_tokens": reply.n_tokens, "time": time.time()}


def confidence_of(rec: dict) -> float:
    """Confidence (percent) used for calibration: the judge's, else the parsed one, else 100
    (the official judge prompt's rule: 'Put 100 if there is no confidence score available')."""
    v, p = rec.get("verdict") or {}, rec.get("parsed") or {}
    for c in (v.get("confidence"), p.get("confidence")):
        if c is not None:
            return min(100.0, max(0.0, float(c)))
    return 100.0


def compute_metrics(items: Sequence[Item], records: dict[str, dict], beta: int = 100,
                    corrected: bool = False) -> dict:
    """All metrics over ``items`` (a missing or ungraded record counts as wrong)."""
    recs = [records.get(it.id) for it in items]
    correct = [bool(r and r["status"] == "graded" and r["verdict"]["correct"]) for r in recs]
    acc, hw = accuracy(correct)
    graded = [r for r in recs if r and r["status"] == "graded"]
    conf = [confidence_of(r) / 100.0 for r in graded]
    corr = [bool(r["verdict"]["correct"]) for r in graded]
    m: dict[str, Any] = {"n": len(items), "n_graded": len(graded), "n_correct": sum(correct),
                         "accuracy": acc, "half_width": hw, "calibration_bin_size": beta}
    try:
        m["calibration_error_official"] = calibration_error(conf, corr, beta, corrected=False)
        m["calibration_error_official_rounded"] = 100 * round(m["calibration_error_official"] / 100, 2)
    except CalibrationError as e:
        m["calibration_error_official"] = None
        m["calibration_note"] = str(e)
    m["calibration_error_corrected"] = calibration_error(conf, corr, beta, corrected=True) if conf else None
    m["calibration_error"] = m["calibration_error_corrected" if corrected else "calibration_error_official"]
    m["calibration_variant"] = "corrected" if corrected else "official"
    parsed = [(r.get("parsed") or {}) for r in recs if r and r.get("parsed")]
    m["answer_missing"] = sum(1 for r in recs if not r or not r.get("parsed")
                              or r["parsed"]["answer_status"] != "ok")
    m["confidence_missing"] = sum(1 for p in parsed if p["confidence_status"] == "missing")
    m["confidence_malformed"] = sum(1 for p in parsed if p["confidence_status"] == "malformed")
    m["generation_errors"] = sum(1 for r in recs if r and r["status"] == "generation_error")
    m["judge_errors"] = sum(1 for r in recs if r and r["status"] == "judge_error")
    m["not_run"] = sum(1 for r in recs if r is None)
    m["mean_confidence"] = 100 * sum(conf) / len(conf) if conf else None
    m["per_category"] = per_category([it.category for it in items], correct)
    m["per_answer_type"] = per_category([it.answer_type for it in items], correct)
    return m


def run_eval(responder: Responder, items: Union[ItemSet, Sequence[Item]],
             judge: Union[str, Judge, None] = "rule", out: Union[str, Path, None] = None, *,
             config: Optional[EvalConfig] = None, variant: str = "default",
             progress: bool = True, extra: Optional[dict] = None) -> EvalResult:
    """Evaluate ``responder`` on ``items``; write ``out/items.jsonl`` and ``out/results.json``.

    ``out=None`` keeps everything in memory (no resume). ``judge``: a Judge or a spec for
    ``make_judge`` ("rule" | "http://host:port/v1")."""
    cfg = config or EvalConfig()
    judge = make_judge(judge) if not isinstance(judge, Judge) else judge
    item_list = list(items)
    if not item_list:
        raise ValueError("no items to evaluate")
    if len({it.id for it in item_list}) != len(item_list):
        raise ValueError("item ids must be unique")
    store = RunStore(out) if out is not None else None
    done = store.load() if store else {}
    memory: dict[str, dict] = dict(done)
    todo = [it for it in item_list if (done.get(it.id) or {}).get("status") != "graded"]
    regen = [it for it in todo if (done.get(it.id) or {}).get("response") is None]
    rejudge = [it for it in todo if (done.get(it.id) or {}).get("response") is not None]
    log.info("%s: %d items, %d already graded, %d to generate, %d to re-judge", variant,
             len(item_list), len(item_list) - len(todo), len(regen), len(rejudge))
    t_start = time.time()
    bar = tqdm(total=len(todo), desc=f"eval {variant}", unit="item", disable=not progress)

    def finish(item: Item, reply: Reply) -> None:
        rec = _record(item, reply, judge, variant, responder.name)
        memory[item.id] = rec
        if store:
            store.append(rec)
        bar.update()

    pool = ThreadPoolExecutor(cfg.workers) if judge.concurrent and cfg.workers > 1 else None
    futs: list[Future] = []
    submit = (lambda it, rep: futs.append(pool.submit(finish, it, rep))) if pool else finish
    try:
        for it in rejudge:
            r = done[it.id]
            submit(it, Reply(text=r["response"], seconds=r.get("gen_seconds") or 0.0,
                             n_tokens=r.get("n_tokens")))
        for a in range(0, len(regen), cfg.batch_size):
            chunk = regen[a:a + cfg.batch_size]
            replies = responder.respond(chunk, [format_messages(it, cfg.prompt_style) for it in chunk])
            if len(replies) != len(chunk):
                raise RuntimeError(f"{type(responder).__name__} returned {len(replies)} replies for "
                                   f"{len(chunk)} items")
            for it, rep in zip(chunk, replies):
                submit(it, rep)
        for f in futs:
            f.result()
    finally:
        if pool:
            pool.shutdown(wait=True)
        bar.close()
    metrics = compute_metrics(item_list, memory, cfg.beta, cfg.corrected_calibration)
    prov = {"variant": variant, "judge": judge.describe(), "judge_stats": dict(judge.stats),
            "responder": responder.describe(), "config": asdict(cfg), "versions": versions(),
            "items": {"n": len(item_list), "sha256": _items_hash(item_list),
                      **(items.summary() if isinstance(items, ItemSet) else {})},
            "resumed": {"already_graded": len(item_list) - len(todo), "rejudged": len(rejudge),
                        "generated": len(regen),
                        "truncated_lines_redone": store.truncated_lines if store else 0},
            "started": t_start, "finished": time.time(), **(extra or {})}
    records = [memory[it.id] for it in item_list if it.id in memory]
    res = EvalResult(metrics=metrics, records=records, out=Path(out) if out else None, provenance=prov)
    if store:
        store.write_json("results.json", {"metrics": metrics, "provenance": prov})
        if cfg.plot:
            graded = [r for r in records if r["status"] == "graded"]
            if graded:
                reliability_diagram([confidence_of(r) / 100 for r in graded],
                                    [bool(r["verdict"]["correct"]) for r in graded],
                                    str(store.folder / "reliability.png"),
                                    title=f"{responder.name} ({variant})")
    return res
