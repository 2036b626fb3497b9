"""``mindscope run PROTOCOL``: one command per registered protocol, options from Config."""
import json
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
    assert all(protocol_names()[n] == s.doc for n, s in protocols().items())
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


# ---- mindscope NAME: the top-level protocol commands and the old spellings (issue 22) --------

def test_top_level_command_per_protocol_same_as_run():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    listed = r.output.split("Protocols", 1)[1]
    for n in protocols():
        assert n in listed
        top = runner.invoke(app, [n, "--help"], terminal_width=200)
        via_run = runner.invoke(app, ["run", n, "--help"], terminal_width=200)
        assert top.exit_code == via_run.exit_code == 0, top.output
        body = lambda s: s.split("\n", 1)[1]  # noqa: E731 - all but the usage line
        assert body(top.output) == body(via_run.output)
    # the old groups are gone from the listing (hidden aliases only)
    assert "introspect " not in r.output.replace("introspection", "")


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom mindscope.cli import app\ntry:\n    app(['--help'])\n"
            "except SystemExit:\n    pass\nprint('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TORCH False" in out.stdout and "introspection" in out.stdout


def test_protocol_commands_follow_the_vocabulary():
    import typer

    for n, spec in protocols().items():
        cmd = typer.main.get_command(protocol_app(spec))
        opts = {o: p for p in cmd.params if not getattr(p, "hidden", False) for o in p.opts}
        for short, long in (("-m", "--model"), ("-o", "--out"), ("-q", "--quiet")):
            assert long in opts[short].opts, (n, short)
        assert "-n" not in opts or set(opts["-n"].opts) == {"-n", "--max-new-tokens"}, n
        assert "--grader" not in opts and "--control" in opts and "--control-strengths" in opts, n
        assert "--temperature" not in opts or opts["--temperature"].opts == ["--temperature"], n
        assert not [p for p in cmd.params if p.param_type_name == "argument"], n


def test_value_syntax():
    from mindscope.cli._protocols import _mixed, _numbers, _texts

    assert _numbers("--x", None)("2/3, 12,18:20") == (2 / 3, 12, 18, 19)
    assert _numbers("--x", float)("3") == (3.0,) and isinstance(_numbers("--x", float)("3")[0], float)
    with pytest.raises(Exception, match="not an integer.*a:b"):
        _numbers("--x", int)("18-25")
    assert _mixed("--x")("The cat, the hat.") == ("The cat, the hat.",)  # text keeps its commas
    assert _mixed("--x")("18,0.5") == (18, 0.5)


def test_text_list_from_file(tmp_path):
    from mindscope.cli._protocols import _texts

    f = tmp_path / "w.txt"
    f.write_text("apple\n\n banana \n")
    assert _texts("--x")(f"@{f}") == ("apple", "banana") and _texts("--x")("pear") == ("pear",)
    with pytest.raises(Exception, match="no such file"):
        _texts("--x")(f"@{tmp_path / 'none.txt'}")


def test_old_spellings_are_rewritten_with_a_note(tmp_path, capsys):
    from mindscope.cli._aliases import rewrite

    words = tmp_path / "words.txt"
    words.write_text("apple\n")
    cases = [
        ("introspection", ["run", "detection", "--grader", "lm", "--baseline", str(words),
                           "--concepts", str(words), "--layers", "2/3,12"],
         ["--protocols", "detection", "--judge", "lm", "--baseline-words", f"@{words}",
          "--concepts", f"@{words}", "--layers", "2/3,12"]),
        ("onpolicy", ["all", "--seed", "1"], ["--seed", "1"]),
        ("onpolicy", ["verbal"], ["--protocols", "verbal"]),
        ("emotions", ["run", "--part", "classify", "-e", "happy", "--emotion=sad", "--stories",
                      "x.jsonl", "--steer", "calm"],
         ["--parts", "classify", "--emotions", "happy", "--emotions=sad", "--story-source",
          "x.jsonl", "--steer-emotions", "calm"]),
        ("persona", ["run", "--part", "drift", "--cap-layers", "18:25"],
         ["--parts", "drift", "--cap-layers", "18:25"]),
        # `--control VALUE` was the control probe; `--control` alone is the positive control
        ("binding", ["run", "--control", "none", "--control", "--C", "0.1"],
         ["--control-probe", "none", "--control", "--C", "0.1"]),
    ]
    for name, old, new in cases:
        capsys.readouterr()
        assert rewrite(name, old) == new, name
        assert "note:" in capsys.readouterr().err, name
        assert rewrite(name, new) == new, name  # the new spelling passes untouched...
        assert capsys.readouterr().err == "", name  # ...without a note


class _FakeLM:
    name = "fake"


@pytest.fixture
def fake_runs(monkeypatch):
    """Every registered protocol's ``run`` replaced by one that records its Config; ``ms.load``
    by one that records its arguments."""
    import dataclasses

    got: dict = {}

    class Res:
        def summary_rows(self):
            return [{"metric": "ok", "value": 1.0}]

    def fake(spec):
        def run(lm, cfg, out_dir):
            got["cfg"] = cfg
            return Res()
        return dataclasses.replace(spec, run=run)

    monkeypatch.setattr(_protocol, "_REGISTRY", {n: fake(s) for n, s in protocols().items()})

    def load(spec, **kw):
        got["load"] = (spec, kw)
        return _FakeLM()
    monkeypatch.setattr(mindscope, "load", load)
    return got


OLD_AND_NEW = {
    "introspection": (["introspect", "detection", "--layers", "2/3,12", "--strengths", "1,2",
                       "--grader", "lm", "--concepts", "{words}"],
                      ["introspection", "--protocols", "detection", "--layers", "2/3",
                       "--layers", "12", "--strengths", "1", "--strengths", "2", "--judge", "lm",
                       "--concepts", "@{words}"]),
    "onpolicy": (["onpolicy", "gap", "--n-prompts", "3"],
                 ["onpolicy", "--protocols", "gap", "--n-prompts", "3"]),
    "binding": (["binding", "run", "--control", "none", "--quiet", "--C", "0.5"],
                ["binding", "--control-probe", "none", "-q", "--C", "0.5"]),
    "emotions": (["emotions", "run", "--part", "classify", "-e", "happy", "-e", "sad", "-e",
                  "calm", "--stories", "model", "--steer", "calm"],
                 ["emotions", "--parts", "classify", "--emotions", "happy", "--emotions", "sad",
                  "--emotions", "calm", "--story-source", "model", "--steer-emotions", "calm"]),
    "persona": (["persona", "run", "--part", "drift", "--cap-layers", "18:21"],
                ["persona", "--parts", "drift", "--cap-layers", "18,19,20"]),
}


def test_none_for_an_optional_field(fake_runs, tmp_path):
    r = runner.invoke(app, ["persona", "--cap-layers", "none", "--judge", "none", "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert fake_runs["cfg"].cap_layers is None and fake_runs["cfg"].judge is None
    r = runner.invoke(app, ["binding", "--control-probe", "shuffle", "-o", str(tmp_path)])
    assert r.exit_code == 0 and fake_runs["cfg"].control == "shuffle", r.output


@pytest.mark.parametrize("name", sorted(OLD_AND_NEW))
def test_old_spelling_builds_the_same_config(name, fake_runs, tmp_path):
    """Each old protocol group still works (hidden, with a note) and builds the same Config as
    the new spelling."""
    words = tmp_path / "words.txt"
    words.write_text("apple\nbanana\n")
    cfgs = []
    for line in OLD_AND_NEW[name]:
        line = [a.format(words=words) for a in line] + ["-o", str(tmp_path / "o")]
        r = runner.invoke(app, line)
        assert r.exit_code == 0, r.output
        assert ("note:" in r.output) == (line[1] in ("run", "detection", "gap")
                                         or line[0] == "introspect"), r.output
        cfgs.append(fake_runs["cfg"])
    assert cfgs[0] == cfgs[1]
    cfg = cfgs[1]
    want = {"introspection": dict(protocols=("detection",), layers=(2 / 3, 12),
                                  strengths=(1.0, 2.0), grader="lm",
                                  concepts=("apple", "banana")),
            "onpolicy": dict(protocols=("gap",), n_prompts=3),
            "binding": dict(control=None, progress=False, C=0.5),
            "emotions": dict(parts=("classify",), emotions=("happy", "sad", "calm"),
                             story_source="model", steer_emotions=("calm",)),
            "persona": dict(parts=("drift",), cap_layers=(18, 19, 20))}[name]
    for k, v in want.items():
        got = getattr(cfg, k)
        assert (tuple(got) if isinstance(got, list) else got) == v, (k, got)


def test_device_and_dtype_reach_load(fake_runs, tmp_path):
    r = runner.invoke(app, ["persona", "--quick", "-m", "mymodel", "--dtype", "bfloat16",
                            "--device", "cpu", "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert fake_runs["load"] == ("mymodel", {"device": "cpu", "dtype": "bfloat16"})
    r = runner.invoke(app, ["persona", "--quick", "-o", str(tmp_path)])
    assert fake_runs["load"] == ("smollm2-135m-instruct", {})  # ms.load's own defaults


def test_bad_value_is_refused_before_the_model_loads(fake_runs, tmp_path):
    r = runner.invoke(app, ["introspection", "--layers", "x", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "--layers" in r.output and "load" not in fake_runs
    r = runner.invoke(app, ["binding", "--min-entities", "2", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "min_entities" in r.output and "load" not in fake_runs


def test_introspect_grader_alias():
    new = runner.invoke(app, ["evals", "judge-agreement"])
    old = runner.invoke(app, ["introspect", "grader"])
    assert new.exit_code == old.exit_code == 0, old.output
    assert '"n"' in new.output and "note:" in old.output and "note:" not in new.output
    assert old.output.split("\n", 1)[1] == new.output  # the same table after the note


# ---- --control: the protocol's registered positive control (experiments.run_control) -------

def test_control_flag_runs_the_registered_control(monkeypatch, tmp_path):
    """A toy protocol reads coordinate 0 of the last-token residual, relative to the untouched
    model; its fake control plants ``Add(e0 x s)``: the CLI must run the control at the
    strengths given, and the runner see 0 untouched and ``s`` planted."""
    import torch

    from mindscope.experiments import Detection, Planted, _control, control
    from mindscope.runs import RunDir
    from mindscope.testing import tiny_lm

    lm = tiny_lm("llama", seed=0)
    e0 = torch.zeros(lm.d_model)
    e0[0] = 1.0

    def coord(m):
        return float(m.capture(["hello there"], sites="resid_post.1", positions="last")
                     ["resid_post.1"].reshape(-1)[0])
    base = coord(lm)
    monkeypatch.setattr(_protocol, "_REGISTRY", dict(_protocol._REGISTRY))
    monkeypatch.setattr(_control, "_CONTROLS", dict(_control._CONTROLS))

    @protocol("toyctl", config=ToyConfig)
    def run(lm_, cfg, out_dir):
        RunDir(out_dir, cfg, lm_, experiment="toyctl").save_results({"shift": coord(lm_) - base})
        return _Res()

    @control("toyctl", detect=lambda r: Detection("shift", r["shift"], r["shift"] - 1e-3,
                                                   r["shift"] + 1e-3), strengths=(1.0,))
    def plant(lm_, cfg, work_dir, strength):
        return Planted.hooked(lm_, {"kind": "add", "summary": f"e0 x {strength}"},
                              mindscope.Add("resid_post.1", e0, scale=strength))

    monkeypatch.setattr(mindscope, "load", lambda spec, **kw: lm)
    cmd = protocol_app(protocols()["toyctl"])
    r = CliRunner().invoke(cmd, ["--control", "--control-strengths", "0.5,3", "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "positive control" in r.output and "control passed" in r.output
    got = json.loads((tmp_path / "control.json").read_text())
    assert got["strengths"] == [0.5, 3.0] and got["passed"] is True
    assert got["untouched"][0]["value"] == pytest.approx(0.0, abs=1e-5)
    assert got["planted"]["3"][0]["value"] == pytest.approx(3.0, abs=1e-3)
    assert coord(lm) == pytest.approx(base, abs=1e-6)  # the planted hook is gone
    monkeypatch.setenv("COLUMNS", "300")
    r = runner.invoke(app, ["protocols"])  # says which protocols have a control
    rows = {ln.split()[1]: ln for ln in r.output.splitlines() if ln.startswith("│")}
    assert rows["toyctl"].rstrip(" │").endswith("yes") and "persona" in rows


def test_control_flag_without_a_registered_control(fake_runs, monkeypatch, tmp_path):
    from mindscope.experiments import _control

    monkeypatch.setattr(_control, "_CONTROLS", {})
    r = runner.invoke(app, ["persona", "--control", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "'persona' has no registered positive control" in " ".join(r.output.split())
    assert "load" not in fake_runs  # refused before the model loads
    r = runner.invoke(app, ["persona", "--control-strengths", "1", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "--control" in r.output and "load" not in fake_runs
    r = runner.invoke(app, ["persona", "--control", "--control-strengths", "0,1", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "> 0" in r.output and "load" not in fake_runs
