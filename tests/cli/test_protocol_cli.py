"""``mindscope run PROTOCOL``: one command per registered protocol, options from Config."""
from dataclasses import dataclass
from typing import Optional

import pytest
from typer.testing import CliRunner

import mindscope
from mindscope.cli import app
from mindscope.cli._protocols import protocol_app, protocol_names
from mindscope.demo import STEPS, demo_protocols
from mindscope.experiments import _protocol, protocol, protocols

runner = CliRunner()


def test_one_command_per_registered_protocol():
    names = set(protocols())
    assert set(protocol_names()) == names  # the lazy listing (read from source) == registry
    r = runner.invoke(app, ["run", "--help"])
    assert r.exit_code == 0, r.output
    for n in names:
        assert n in r.output
    for n in names:  # each builds, with the common options
        r = runner.invoke(app, ["run", n, "--help"])
        assert r.exit_code == 0 and "--quick" in r.output and "--model" in r.output, r.output


@dataclass
class ToyConfig:
    n_widgets: int = 3
    """How many widgets the toy protocol counts."""
    words: tuple = ("a", "b")
    """Words to count."""
    grader: str = "rule"
    """Who grades."""
    cap: Optional[tuple] = None
    """Untyped items: numbers become numbers."""

    @classmethod
    def quick(cls, **over):
        return cls(**{"n_widgets": 1, **over})


class _Res:
    def summary_rows(self):
        return [{"metric": "widgets", "value": seen[-1].n_widgets}]


seen: list = []


def test_config_field_becomes_an_option_with_its_docstring(monkeypatch, tmp_path):
    monkeypatch.setattr(_protocol, "_REGISTRY", dict(_protocol._REGISTRY))

    @protocol("toycli", config=ToyConfig)
    def run(lm, cfg, out_dir):
        seen.append(cfg)
        return _Res()

    cmd = protocol_app(protocols()["toycli"])
    r = CliRunner().invoke(cmd, ["--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "--n-widgets" in r.output and "How many widgets the toy protocol counts." in r.output
    assert "--judge" in r.output and "--grader" not in r.output  # the agreed vocabulary

    class LM:
        name = "toy"
    monkeypatch.setattr(mindscope, "load", lambda spec: LM())
    r = CliRunner().invoke(cmd, ["--n-widgets", "7", "--words", "x", "--words", "y",
                                 "--judge", "lm", "--cap", "18", "--cap", "0.5", "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert seen[-1] == ToyConfig(n_widgets=7, words=("x", "y"), grader="lm", cap=(18, 0.5))
    r = CliRunner().invoke(cmd, ["--quick", "-o", str(tmp_path)])  # unset options keep quick()
    assert r.exit_code == 0, r.output
    assert seen[-1] == ToyConfig.quick()
    n = len(seen)
    r = CliRunner().invoke(cmd, ["--n-widgets", "many"])
    assert r.exit_code == 2 and "Error" in r.output and len(seen) == n  # usage error, no run


def test_demo_lists_its_protocols_from_the_registry():
    sel = {n: p.demo_step for n, p in protocols().items() if p.demo_step}
    assert demo_protocols() == sel and sel  # the demo runs at least one protocol
    assert [s for s in STEPS if s in sel.values()] == list(sel.values())
