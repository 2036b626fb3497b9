"""The control suite (``mindscope controls``): every registered control is in it, its commands
name real modules and real Config fields, and the runner schedules, skips, resumes and reports
verdicts from control.json (not from exit codes) on a toy suite of tiny commands."""
import importlib.util
import json
import sys

import pytest

from mindscope.core import BadInputError
from mindscope.experiments import config_fields, controls, protocols
from mindscope.experiments.control_suite import SUITE, SuiteEntry, run_suite


def test_every_registered_control_is_in_the_suite():
    names = {e.name for e in SUITE}
    assert set(controls()) <= names
    assert "audit" in names  # audit is not a @protocol; its control has its own module


def test_suite_commands_name_real_modules_and_config_fields():
    reg = protocols()
    for e in SUITE:
        assert e.minutes > 0 and e.doc.startswith("docs/experiments/")
        for step in e.steps:
            assert step[0] == "-m" and importlib.util.find_spec(step[1]) is not None, step
            if step[1] == "mindscope.experiments.positive_control":
                fields = {f.name for f in config_fields(reg[step[2]].config)}
                sets = [step[i + 1].split("=")[0] for i, a in enumerate(step) if a == "--set"]
                assert set(sets) <= fields, (e.name, set(sets) - fields)


def _py(code: str) -> tuple:
    return ("-c", code)


def _writes(passed: bool, rc: int) -> tuple:
    return _py("import json,sys,pathlib; d=pathlib.Path(sys.argv[1]); "
               f"(d/'control.json').write_text(json.dumps({{'passed': {passed}}})); "
               f"sys.exit({rc})") + ("{dir}",)


def test_runner_verdicts_logs_and_resume(tmp_path):
    marker = str(tmp_path / "built")
    suite = (
        SuiteEntry("good", (_writes(True, 0),), 1.0, "docs/experiments/x.md"),
        SuiteEntry("bad", (_writes(False, 1),), 2.0, "docs/experiments/x.md"),
        SuiteEntry("crash", (_py("raise SystemExit('boom: the planted model is missing')"),),
                   3.0, "docs/experiments/x.md"),
        # two steps: the first makes a file the second needs, and is skipped once it exists
        SuiteEntry("two", (_py(f"import pathlib; pathlib.Path({marker!r}).write_text('x')"),
                           _writes(True, 0)), 0.5, "docs/experiments/x.md",
                   skip_if=(marker, "")),
    )
    s = run_suite(tmp_path / "out", jobs=2, suite=suite)
    verdict = {r["name"]: r["verdict"] for r in s["controls"]}
    assert verdict == {"good": "PASSED", "bad": "FAILED", "crash": "ERROR", "two": "PASSED"}
    assert s["passed"] == 2 and [r["name"] for r in s["controls"]] == ["good", "bad", "crash", "two"]
    assert all(0 <= r["cpu_minutes"] <= r["minutes"] * 2 + 0.01 for r in s["controls"])
    crash = next(r for r in s["controls"] if r["name"] == "crash")
    assert crash["rc"] == 1 and "boom" in crash["log_tail"]
    on_disk = json.loads((tmp_path / "out" / "suite.json").read_text())
    assert on_disk["passed"] == 2
    md = (tmp_path / "out" / "suite.md").read_text()
    assert "| bad | FAILED |" in md and "2 of 4 controls passed" in md
    # a second call: the "two" entry's first step is skipped (its output exists)
    run_suite(tmp_path / "out", jobs=1, only=["two"], suite=suite)
    log = (tmp_path / "out" / "logs" / "two.log").read_text()
    assert log.count("step 1 skipped") == 1 and log.count("[suite] step 1:") == 1


def test_a_stale_control_json_is_not_a_verdict(tmp_path):
    """A crash after an earlier run's control.json stays ERROR (the old file is not this run's)."""
    d = tmp_path / "out" / "c"
    d.mkdir(parents=True)
    (d / "control.json").write_text(json.dumps({"passed": True}))
    suite = (SuiteEntry("c", (_py("import sys; sys.exit(1)"),), 1.0, "docs/experiments/x.md"),)
    s = run_suite(tmp_path / "out", suite=suite)
    assert s["controls"][0]["verdict"] == "ERROR"


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(BadInputError, match="choose from"):
        run_suite(tmp_path, only=["nope"])
    with pytest.raises(BadInputError, match="jobs"):
        run_suite(tmp_path, jobs=0)


def test_every_named_result_file_and_key_decides_the_verdict(tmp_path):
    """An entry with two result files (emotions: extraction, then causal steering) passes only
    when both are written by this call and every named key is true."""
    both = _py("import json,sys,pathlib; d=pathlib.Path(sys.argv[1]); "
               "(d/'control.json').write_text(json.dumps({'passed': True})); "
               "(d/'steering.json').write_text(json.dumps({'passed': True, 'passed_strict': False}))"
               ) + ("{dir}",)
    e = SuiteEntry("two_files", (both,), 1.0, "docs/experiments/x.md",
                   verdicts=(("control.json", ("passed",)),
                             ("steering.json", ("passed", "passed_strict"))))
    row = run_suite(tmp_path, suite=(e,))["controls"][0]
    assert row["verdict"] == "FAILED" and row["checks"] == {
        "control.json:passed": True, "steering.json:passed": True,
        "steering.json:passed_strict": False}
    only_one = SuiteEntry("one", (_writes(True, 0),), 1.0, "docs/experiments/x.md",
                          verdicts=e.verdicts)
    assert run_suite(tmp_path / "b", suite=(only_one,))["controls"][0]["verdict"] == "ERROR"


def test_cpu_minutes_count_the_child_processes_own_cpu_time(tmp_path):
    """A step that burns CPU for a while is charged its own CPU time, a sleeping one ~none."""
    burn = _py("import time; t=time.process_time()\nwhile time.process_time() - t < 0.6: pass")
    sleep = _py("import time; time.sleep(0.6)")
    suite = (SuiteEntry("burn", (burn, _writes(True, 0)), 1.0, "docs/experiments/x.md"),
             SuiteEntry("sleep", (sleep, _writes(True, 0)), 1.0, "docs/experiments/x.md"))
    rows = {r["name"]: r for r in run_suite(tmp_path, jobs=2, suite=suite)["controls"]}
    assert rows["burn"]["cpu_minutes"] * 60 >= 0.55
    assert rows["sleep"]["cpu_minutes"] * 60 < rows["burn"]["cpu_minutes"] * 60 - 0.3
