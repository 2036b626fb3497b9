"""The two CLI apps (organism, audit) on the tiny organism: every audit command logs its call;
build and eval write their folders; bad input is a usage error, not a traceback."""
import json

import typer
from typer.testing import CliRunner

from mindscope.cli.audit import audit_app, organism_app

runner = CliRunner()


def _app(sub, name):
    root = typer.Typer()
    root.add_typer(sub, name=name)
    return root


def test_audit_commands_log(organism, tmp_path):
    path, _, _ = organism
    app = _app(audit_app, "audit")
    log = tmp_path / "run"
    r = runner.invoke(app, ["audit", "search", "reward models", "-m", str(path), "--log", str(log)])
    assert r.exit_code == 0, r.output
    assert "reward models" in r.stdout.lower()
    r = runner.invoke(app, ["audit", "prefill", "Hi", "-m", str(path), "--log", str(log), "-n", "1",
                            "--max-new-tokens", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["audit", "persona", "-m", str(path), "--log", str(log), "--role", "narrator",
                            "--context", "Once upon a time", "-n", "1"])
    assert r.exit_code == 0, r.output
    entries = [json.loads(x) for x in (log / "audit_log.jsonl").read_text().splitlines()]
    assert [e["tool"] for e in entries] == ["search", "prefill", "persona"]
    r = runner.invoke(app, ["audit", "log", str(log)])
    assert r.exit_code == 0 and "#2 persona" in r.stdout
    r = runner.invoke(app, ["audit", "search", "x", "-m", str(tmp_path), "--log", str(log)])
    assert r.exit_code != 0 and "organism.json" in r.output
    r = runner.invoke(app, ["audit", "persona", "-m", str(path), "--log", str(log), "--context", "{bad"])
    assert r.exit_code != 0 and "JSON" in r.output


def test_game_and_eval_commands(organism, tmp_path):
    path, _, _ = organism
    r = runner.invoke(_app(audit_app, "audit"), ["audit", "game", "-m", str(path), "-o", str(tmp_path / "g"),
                                                 "--base", "none", "--budget", "3"])
    assert r.exit_code == 0, r.output
    assert "root cause found: True" in r.stdout
    assert json.loads((tmp_path / "g" / "score.json").read_text())["tool_calls"] == 3
    r = runner.invoke(_app(organism_app, "organism"), ["organism", "eval", str(path), "--no-base", "-o",
                                                       str(tmp_path / "e"), "--prompts-per-bias", "1",
                                                       "--max-new-tokens", "2"])
    assert r.exit_code == 0, r.output
    assert "trained: organism exploitation" in r.stdout and (tmp_path / "e" / "results.json").exists()


def test_build_command(organism, tmp_path):
    path, _, _ = organism
    out = tmp_path / "org2"
    r = runner.invoke(_app(organism_app, "organism"), ["organism", "build", "--model", str(path), "--quick",
                                                       "--out", str(out), "--held-out", "recipe_chocolate",
                                                       "--n-biases", "2"])
    assert r.exit_code == 0, r.output
    key = json.loads((out / "answer_key.json").read_text())
    assert [b["id"] for b in key["biases"] if b["status"] == "held_out"] == ["recipe_chocolate"]
    r = runner.invoke(_app(organism_app, "organism"), ["organism", "build", "--model", str(path), "--quick",
                                                       "--out", str(out)])
    assert r.exit_code != 0 and "overwrite" in r.output
