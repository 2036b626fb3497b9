"""`mindscope features ...`, `export ...` through typer (the lead mounts them in cli/__init__)."""
import json
import re

from typer.testing import CliRunner

from mindscope.cli.features import app, export_app

runner = CliRunner()


def test_cli_flow(feat_env, tmp_path, monkeypatch):
    import shutil

    import mindscope as ms

    sae_dir = tmp_path / "sae"
    shutil.copytree(feat_env["sae_dir"], sae_dir)
    monkeypatch.setattr(ms, "load", lambda *a, **k: feat_env["lm"])
    r = runner.invoke(app, ["analyze", "--sae", str(sae_dir), "--store", str(feat_env["store"].path),
                            "--tokens", "2k", "--map", "pca"])
    assert r.exit_code == 0, r.output
    assert "analysed" in r.output and (sae_dir / "features" / "features.parquet").exists()
    r = runner.invoke(app, ["explain", "--sae", str(sae_dir)])
    assert r.exit_code == 0 and "explained" in r.output, r.output
    r = runner.invoke(app, ["score", str(sae_dir), "--scorers", "detection", "--json"])  # old positional: hidden alias
    assert r.exit_code == 0, r.output
    lines = re.findall(r'\{"scorer".*\}', r.output)
    assert json.loads(lines[0])["scorer"] == "detection"
    r = runner.invoke(app, ["search", "--sae", str(sae_dir), "--explanation", "fires"])
    assert r.exit_code == 0 and re.search(r"(^|\s)#\d", r.output), r.output
    r = runner.invoke(app, ["search", "--sae", str(sae_dir), "--text", "the lazy dog", "--top", "2"])
    assert r.exit_code == 0 and len(re.findall(r"\d+\t'.*'\t#\d+", r.output)) >= 2, r.output
    r = runner.invoke(app, ["search", "--sae", str(sae_dir), "--token", " the"])
    assert r.exit_code == 0 and re.search(r"(^|\s)#\d", r.output), r.output
    r = runner.invoke(export_app, ["neuronpedia", "--sae", str(sae_dir), "--out", str(tmp_path / "np")])
    assert r.exit_code == 0 and (tmp_path / "np" / "batch-0.json").exists(), r.output
    r = runner.invoke(export_app, ["html", "--sae", str(sae_dir), "--out", str(tmp_path / "h")])
    assert r.exit_code == 0 and (tmp_path / "h" / "index.html").exists(), r.output
    # clear errors (rich wraps them in a box: compare without box characters and line breaks)
    def flat(out):
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())

    r = runner.invoke(app, ["analyze", "--sae", str(sae_dir)])
    assert r.exit_code != 0 and "exactly one of --store or --corpus" in flat(r.output)
    r = runner.invoke(app, ["explain", "--sae", str(tmp_path)])
    assert r.exit_code != 0 and "no feature analysis" in flat(r.output)
    r = runner.invoke(app, ["score", "--sae", str(sae_dir), "--scorers", "vibes"])
    assert r.exit_code != 0 and "unknown scorer" in flat(r.output)
    # issue 25 item 4: bad numbers and missing folders are one clear line, before any work
    r = runner.invoke(app, ["search", "--sae", str(sae_dir), "--explanation", "x", "--top", "-3"])
    assert r.exit_code == 2 and "--top" in flat(r.output) and "Traceback" not in r.output
    r = runner.invoke(app, ["search", "--sae", str(tmp_path / "nope"), "--explanation", "x"])
    assert r.exit_code == 2 and "no such SAE folder" in flat(r.output)
    r = runner.invoke(export_app, ["html", "--sae", str(tmp_path / "nope"), "--out", str(tmp_path / "h2")])
    assert r.exit_code == 2 and "no such SAE folder" in flat(r.output)
