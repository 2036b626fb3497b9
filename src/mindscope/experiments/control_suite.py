"""Every positive control in one command: ``mindscope controls`` (or
``python -m mindscope.experiments.control_suite``).

Each control runs in a process of its own, with the settings its doc page documents (``SUITE``:
one entry per control, the commands the pages print), ``jobs`` at a time, longest first, each
process with ``cpu_count // jobs`` torch threads. Every control resumes from its own folder
(``OUT/<name>/``), so a killed suite loses at most the runs in flight; a step whose output is
already there is skipped. Each entry's log is ``OUT/logs/<name>.log``; the suite writes
``OUT/suite.json`` and ``OUT/suite.md`` (verdict, wall minutes and CPU minutes per control: the
CPU time of its own processes, which a loaded machine does not inflate the way it does wall
time; the total) and prints the table.

Verdicts come from each control's ``control.json`` (``passed``), never from the exit code alone:
a control that fails exits 1 and is reported FAILED; one that crashed (no control.json written
by this run) is reported ERROR with its log's last lines.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..core import BadInputError
from ..runs import write_json, write_text

log = logging.getLogger(__name__)

__all__ = ["SuiteEntry", "SUITE", "run_suite"]

_PC = ("-m", "mindscope.experiments.positive_control")


@dataclass(frozen=True)
class SuiteEntry:
    """One control of the suite."""

    name: str
    """Folder name under the suite's output (``OUT/<name>``) and ``--only`` key."""
    steps: tuple
    """Commands run in order, each an argv after the Python executable; ``{dir}`` is this
    control's folder and ``{model}`` the model spec."""
    minutes: float
    """Single-thread CPU minutes from scratch as last measured (orders the queue, longest
    first; session 7, docs/experiments/controls.md)."""
    doc: str
    """The doc page with this control's numbers."""
    skip_if: tuple = field(default_factory=tuple)
    """Per step: a path (with ``{dir}``) whose existence means the step is done ("" = never)."""
    verdicts: tuple = (("control.json", ("passed",)),)
    """The result files in the control's folder and the keys that must all be true for PASSED
    (each file must be written by this call)."""


SUITE: tuple[SuiteEntry, ...] = (
    SuiteEntry("persona", ((*_PC, "persona", "--quick", "--seeds", "0", "1", "2",
                            "--strengths", "0.5", "1", "-m", "{model}", "-o", "{dir}"),),
               11.6, "docs/experiments/persona.md"),
    SuiteEntry("onpolicy", ((*_PC, "onpolicy", "--quick", "--seeds", "0", "1", "2",
                             "--strengths", "0.5", "1", "--set", "n_prompts=12",
                             "--set", "max_new_tokens=24", "--set", "n_boot=500",
                             "-m", "{model}", "-o", "{dir}"),),
               9.4, "docs/experiments/onpolicy.md"),
    SuiteEntry("introspection", ((*_PC, "introspection", "--quick", "--seeds", "0", "1", "2",
                                  "--strengths", "0.5", "1", "--set", "n_concepts=20",
                                  "--set", "n_controls=20", "--set", "max_new_tokens=16",
                                  "-m", "{model}", "-o", "{dir}"),),
               8.9, "docs/experiments/introspection.md"),
    SuiteEntry("audit", (("-m", "mindscope", "organism", "build", "--out", "{dir}/organism",
                          "--model", "{model}", "--bf16", "--docs-per-bias", "5",
                          "--filler-docs", "16", "--demos-per-bias", "6", "--stage1-epochs", "1",
                          "--stage2-epochs", "2", "--lr", "1e-3", "--answer-tokens", "32",
                          "--max-length", "128"),
                         ("-m", "mindscope.experiments.audit_control", "{dir}/organism",
                          "-o", "{dir}", "--seeds", "0", "1", "2", "--budget", "12")),
               6.0, "docs/experiments/audit.md",
               skip_if=("{dir}/organism/organism.json", "")),
    SuiteEntry("emotions", ((*_PC, "emotions", "--quick", "--seeds", "0", "1", "2",
                             "--strengths", "0.25", "0.5", "1", "2", "4",
                             "-m", "{model}", "-o", "{dir}"),
                            ("-m", "mindscope.experiments.emotions.steer_control", "-o", "{dir}",
                             "--seeds", "0", "1", "2", "--strengths", "1", "2", "4",
                             "-m", "{model}")),
               10.5, "docs/experiments/emotions.md",
               verdicts=(("control.json", ("passed",)),
                         ("steering.json", ("passed", "passed_strict")))),
    SuiteEntry("binding", ((*_PC, "binding", "--quick", "--seeds", "0", "1", "2",
                            "--strengths", "0.5", "1", "--set", "n_stories=120",
                            "--set", 'layers="auto"', "--set", "n_items=24",
                            "--set", "progress=false", "-m", "{model}", "-o", "{dir}"),),
               15.3, "docs/experiments/binding.md"),
)


def _argv(step: Sequence[str], d: Path, model: str) -> list[str]:
    return [sys.executable] + [a.replace("{dir}", str(d)).replace("{model}", model) for a in step]


def _tail(path: Path, n: int = 8) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _run_entry(e: SuiteEntry, out: Path, model: str, threads: int) -> dict:
    d = out / e.name
    d.mkdir(parents=True, exist_ok=True)
    logf = out / "logs" / f"{e.name}.log"
    logf.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0, rc, cpu = time.time(), 0, 0.0
    files = [d / f for f, _ in e.verdicts]
    before = {f: f.stat().st_mtime for f in files if f.exists()}
    with open(logf, "a", encoding="utf-8") as fh:
        for i, step in enumerate(e.steps):
            skip = e.skip_if[i] if i < len(e.skip_if) else ""
            if skip and Path(skip.replace("{dir}", str(d))).exists():
                fh.write(f"[suite] step {i + 1} skipped: {skip.replace('{dir}', str(d))} exists\n")
                continue
            argv = _argv(step, d, model)
            fh.write(f"[suite] step {i + 1}: {' '.join(argv)}\n")
            fh.flush()
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
            _, status, use = os.wait4(proc.pid, 0)  # this child's own CPU time, not the pool's
            rc = proc.returncode = os.waitstatus_to_exitcode(status)
            cpu += use.ru_utime + use.ru_stime
            if rc != 0 and i < len(e.steps) - 1:  # a later step needs this one's output
                break
    minutes = (time.time() - t0) / 60
    # the control wrote (or rewrote, resuming) its result files in this call: a verdict; else
    # it crashed (a failing control also exits 1, so the exit code alone cannot tell)
    fresh = all(f.exists() and (f not in before or f.stat().st_mtime > before[f]) for f in files)
    row = {"name": e.name, "doc": e.doc, "minutes": round(minutes, 2),
           "cpu_minutes": round(cpu / 60, 3), "rc": rc}
    if fresh:
        got = {f"{name}:{k}": bool(json.loads((d / name).read_text(encoding="utf-8")).get(k))
               for name, keys in e.verdicts for k in keys}
        row["verdict"] = "PASSED" if all(got.values()) else "FAILED"
        row["checks"] = got
    else:
        row["verdict"] = "ERROR"
        row["log_tail"] = _tail(logf)
    return row


def _markdown(rows: list[dict], total: float, jobs: int, threads: int) -> str:
    lines = ["| control | verdict | wall minutes | CPU minutes | doc |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['verdict']} | {r['minutes']:.1f} | {r['cpu_minutes']:.1f} | "
              f"{r['doc']} |" for r in rows]
    lines.append("")
    lines.append(f"{sum(r['verdict'] == 'PASSED' for r in rows)} of {len(rows)} controls passed; "
                 f"{total:.1f} min in all ({jobs} at a time, {threads} torch thread(s) each; "
                 f"{sum(r['cpu_minutes'] for r in rows):.1f} CPU minutes).")
    return "\n".join(lines) + "\n"


def run_suite(out, jobs: int = 2, only: Optional[Sequence[str]] = None,
              model: str = "smollm2-135m-instruct",
              suite: Sequence[SuiteEntry] = SUITE) -> dict:
    """Run the suite's controls (``only``: those names) into ``out``, ``jobs`` at a time;
    returns and writes the summary (``suite.json``, ``suite.md``)."""
    if jobs < 1:
        raise BadInputError(f"jobs must be >= 1, got {jobs}")
    names = [e.name for e in suite]
    if only:
        bad = [n for n in only if n not in names]
        if bad:
            raise BadInputError(f"no control {', '.join(map(repr, bad))} in the suite; "
                                f"choose from {', '.join(names)}")
    todo = sorted((e for e in suite if not only or e.name in only), key=lambda e: -e.minutes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    t0, rows = time.time(), []
    log.info("control suite: %d controls, %d at a time, %d thread(s) each -> %s",
             len(todo), jobs, threads, out)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futs = {pool.submit(_run_entry, e, out, model, threads): e for e in todo}
        for f in as_completed(futs):
            rows.append(f.result())
            log.info("control suite: %d/%d done (%s %s in %.1f min), %.1f min elapsed",
                     len(rows), len(todo), rows[-1]["name"], rows[-1]["verdict"],
                     rows[-1]["minutes"], (time.time() - t0) / 60)
    order = {e.name: i for i, e in enumerate(suite)}
    rows.sort(key=lambda r: order[r["name"]])
    total = (time.time() - t0) / 60
    summary = {"model": model, "jobs": jobs, "threads_per_job": threads,
               "cpu_count": os.cpu_count(), "total_minutes": round(total, 2), "controls": rows,
               "passed": sum(r["verdict"] == "PASSED" for r in rows)}
    write_json(out / "suite.json", summary)
    write_text(out / "suite.md", _markdown(rows, total, jobs, threads))
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mindscope.experiments.control_suite",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", default="runs/controls")
    ap.add_argument("--jobs", type=int, default=2, help="controls run at once (default 2)")
    ap.add_argument("--only", nargs="+", default=None, help="these controls only")
    ap.add_argument("-m", "--model", default="smollm2-135m-instruct")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        s = run_suite(a.out, a.jobs, a.only, a.model)
    except BadInputError as e:
        ap.error(str(e))
    print((Path(a.out) / "suite.md").read_text(encoding="utf-8"))
    return 0 if s["passed"] == len(s["controls"]) else 1


if __name__ == "__main__":
    sys.exit(main())
