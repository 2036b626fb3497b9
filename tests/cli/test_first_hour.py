"""Issue 25, a researcher's first hour: CLI errors, vocabulary, checks before loading, speed."""
import subprocess
import sys

from typer.testing import CliRunner

from mindscope.cli import app

runner = CliRunner()


def flat(r) -> str:
    """Output with whitespace runs collapsed (messages may wrap)."""
    return " ".join((r.output or "").split())


def test_cli_import_does_not_load_torch():
    """`mindscope --help` stays fast: importing the CLI imports neither torch nor transformers."""
    code = ("import sys, mindscope.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'duckdb', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_top_level_names():
    import mindscope as ms

    assert ms.Add.__name__ == "Add" and callable(ms.load) and "load" in dir(ms)


def test_errors_are_one_or_two_lines(tmp_path):
    r = runner.invoke(app, ["sae", "eval", "--sae", str(tmp_path / "no" / "such"), "--store", str(tmp_path)])
    assert r.exit_code == 2 and "no such" in flat(r)
    assert len(r.output.strip().splitlines()) <= 2 and "Traceback" not in r.output
    (tmp_path / "sweep.json").write_text("{not json")
    r = runner.invoke(app, ["sae", "plan", "--budget", "1e12", "--sweep", str(tmp_path)])
    assert r.exit_code == 2 and "sweep.json" in r.output and len(r.output.strip().splitlines()) == 2
    r = runner.invoke(app, ["sae", "plan", "--budget", "1e12", "--sweep", str(tmp_path), "--debug"])
    assert r.exit_code != 0 and isinstance(r.exception, ValueError)  # --debug: the raw error
    r = runner.invoke(app, ["generate", "-p", "hi", "--steer", "x.safetensors"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 2 and "SCALE" in flat(r)


def test_saved_files_are_0644(tmp_path):
    """Item 14: files are written 0644 (vector save used mkstemp's 0600)."""
    import os
    import stat

    import torch

    import mindscope as ms

    old = os.umask(0o022)
    try:
        p = ms.Vector(torch.randn(8), site="resid_post.1").save(tmp_path / "v.safetensors")
    finally:
        os.umask(old)
    for f in (p, p.with_suffix(".json")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_models_install_commands_are_not_cut(monkeypatch):
    """Item 9: the install command is printed whole, whatever the terminal width."""
    import mindscope.core as core

    rows = [{"alias": "x-model", "installed": False, "layers": 3, "d_model": 8, "note": "n",
             "install": "pip install a-very-long-package-name " + " ".join(f"part{i}" for i in range(12))}]
    monkeypatch.setattr(core, "list_models", lambda: rows)
    r = runner.invoke(app, ["models"], env={"COLUMNS": "80"})
    assert r.exit_code == 0 and rows[0]["install"] in r.output


def test_quiet_hides_the_weight_loading_bar(tmp_path, tiny):
    """Item 9: -q hides transformers' "Loading weights" bar and generate's progress."""
    lm = tiny("llama")
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    r = runner.invoke(app, ["generate", "-p", "hi", "-n", "2", "-q", "-m", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "Loading weights" not in r.output and "generate:" not in r.output
    r = runner.invoke(app, ["generate", "-p", "hi", "-n", "2", "-m", str(tmp_path / "m")])
    assert r.exit_code == 0 and "Loading weights" in r.output and "generate:" in r.output  # shown without -q


def test_notebook_displays(tiny, tmp_path):
    """Item 10: short reprs and _repr_html_ for generations, SAE, feature pages, eval results;
    report cells never show raw Python dicts (item 14)."""
    import torch

    from mindscope.evals import EvalResult
    from mindscope.runs import Page
    from mindscope.features._tables import FeaturePage
    from mindscope.sae import SAE, SAEConfig

    lm = tiny("llama")
    gens = lm.generate(["hi", "yo"], max_new_tokens=40, stop_at_eos=False, progress=False)
    assert "<table>" in gens._repr_html_() and len(repr(gens)) < 300
    assert repr(gens[0]).startswith("Generation(") and "token_ids" not in repr(gens[0])
    sae = SAE(SAEConfig("topk", 64, 256, k=4, site="resid_post.1"))
    assert "resid_post.1" in sae._repr_html_() and "tensor(" not in repr(sae)
    page = FeaturePage({"latent": 3, "density": 0.01, "max_act": 2.5, "top": [{"text": "a b", "value": 1.0}],
                        "explanation": {"explanation": "the letter b"}, "promoted": []})
    assert repr(page).startswith("FeaturePage(latent=3") and "the letter b" in page._repr_html_()
    res = EvalResult(metrics={"n": 3, "accuracy": 33.3333, "half_width": 20.0}, records=[{"x": 1}] * 500,
                     provenance={"judge": {"name": "rule"}})
    assert repr(res) == "EvalResult(n=3, accuracy=33.3 ± 20.0, judge='rule', out=None)"
    assert "accuracy" in res._repr_html_()
    html = Page("t").table([{"key": "settings", "value": {"layers": [6, 10], "scale": 0.123456}}]).render()
    cells = html.split("<table")[1]
    assert "{" not in cells and "scale 0.123" in cells and "layers 6, 10" in cells
    assert torch.is_tensor(sae.W_enc)


def test_checks_run_before_the_model_loads(tmp_path):
    """Item 9: with a model that does not exist, the vector file / site / count is what is
    reported: those checks ran first."""
    nomodel = ["-m", str(tmp_path / "no-model")]
    r = runner.invoke(app, ["generate", "-p", "hi", "--steer", f"{tmp_path}/none.safetensors:4", *nomodel])
    assert r.exit_code == 2 and "no such vector file" in flat(r)
    r = runner.invoke(app, ["harvest", "--sites", "resid_post.99", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "30 blocks" in flat(r)  # from the alias table, nothing loaded
    r = runner.invoke(app, ["steer", "sweep", "--concept", "x", "--strengths", "a,b", "-o",
                            str(tmp_path / "o"), *nomodel])
    assert r.exit_code == 2 and "not a number" in flat(r)


def _commands():
    import typer

    def walk(c, path):
        if getattr(c, "commands", None):
            for n, sub in c.commands.items():
                yield from walk(sub, path + [n])
        else:
            yield " ".join(path), c

    yield from walk(typer.main.get_command(app), [])


def test_one_option_vocabulary():
    """Item 6: the agreed spellings (docs/cli.md) across the non-protocol commands."""
    mine = ("models", "generate", "demo", "eval", "harvest", "serve", "sae ", "vector ", "steer",
            "lens ", "patch ", "features ", "export ", "corpus ")
    seen = 0
    for name, cmd in _commands():
        if not name.startswith(mine):
            continue
        seen += 1
        opts = {o: p for p in cmd.params if not getattr(p, "hidden", False) for o in p.opts}
        args = [p.name for p in cmd.params if p.param_type_name == "argument" and not p.hidden]
        for short, long in (("-m", "--model"), ("-o", "--out"), ("-q", "--quiet"),
                            ("-n", "--max-new-tokens")):
            if short in opts:
                assert long in opts[short].opts, (name, short)
        for never in ("-s", "-t", "--grader"):
            assert never not in opts, (name, never)
        if "--temperature" in opts or "--target" in opts or "--scale" in opts:
            for o in ("--temperature", "--target", "--scale"):
                assert o not in opts or len(opts[o].opts) == 1, (name, o)
        assert not any("sae" in a or a == "dir" for a in args), (name, args)  # --sae, never positional
        if "--model" in opts and name not in ("sae eval",):
            assert "-m" in opts["--model"].opts, name
    assert seen > 20
