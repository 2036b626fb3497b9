"""`mindscope vector ...` and `mindscope steer ...` end to end on a tiny model folder."""
import json

import pytest
import typer
from typer.testing import CliRunner

from mindscope.cli.steering import steer_app, vector_app

runner = CliRunner()
app = typer.Typer()
app.add_typer(vector_app, name="vector")
app.add_typer(steer_app, name="steer")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mindscope.testing import tiny_lm

    lm = tiny_lm("llama")
    d = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


def test_extract_info_steer_sweep(model_dir, tmp_path):
    m = ["--model", str(model_dir)]
    r = runner.invoke(app, ["vector", "extract", "--method", "concept", "--word", "music",
                            "--site", "resid_post.2", "--out", str(tmp_path / "music"), *m])
    assert r.exit_code == 0, r.output
    f = tmp_path / "music.safetensors"
    r = runner.invoke(app, ["vector", "info", str(f), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["method"] == "concept" and info["site"] == "resid_post.2" and info["shape"] == [64]
    (tmp_path / "pos.txt").write_text("I love it\nGreat day\n")
    (tmp_path / "neg.txt").write_text("I hate it\nBad day\n")
    r = runner.invoke(app, ["vector", "extract", "--method", "caa", "--sites", "resid_post.1:3",
                            "--positive", str(tmp_path / "pos.txt"), "--negative",
                            str(tmp_path / "neg.txt"), "--out", str(tmp_path / "caa"), *m])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["vector", "info", str(tmp_path / "caa.safetensors")])
    assert r.exit_code == 0 and "VectorSet" in r.output
    r = runner.invoke(app, ["vector", "export-gguf", str(tmp_path / "caa.safetensors"),
                            "--out", str(tmp_path / "caa.gguf")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["steer", "--vector", str(f), "--scale", "4", "--prompt", "Hi",
                            "-n", "3", *m])
    assert r.exit_code == 0 and "steered (resid_post.2 x 4)" in r.output, r.output
    r = runner.invoke(app, ["steer", "sweep", "--concept", "music", "--layers", "1,2",
                            "--strengths", "0,4", "-n", "3", "--out", str(tmp_path / "sw"), *m])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "sw" / "sweep.png").is_file()


def test_cli_errors_are_clear(model_dir, tmp_path):
    (tmp_path / "v.safetensors").write_bytes(b"junk")
    r = runner.invoke(app, ["vector", "info", str(tmp_path / "v.safetensors")])
    assert r.exit_code != 0 and "v.safetensors" in r.output
    r = runner.invoke(app, ["steer", "--prompt", "Hi"])
    assert r.exit_code != 0 and "--vector" in r.output


def test_first_hour_vocabulary(model_dir, tmp_path):
    """Issue 25: old spellings are hidden aliases with a note; the site comes from the vector file
    (item 8); numbers, sites and files are checked before the model loads (item 9); 0644 files."""
    import stat

    from mindscope.cli import app as root

    m = ["--model", str(model_dir)]
    r = runner.invoke(root, ["vector", "extract", "--word", "music", "--site", "resid_post.2",
                             "--out", str(tmp_path / "music"), "-q", *m])  # --site: old spelling
    assert r.exit_code == 0 and "--site is now --sites" in r.output, r.output
    assert "capture" not in r.output and "Loading weights" not in r.output  # -q: no bars
    f = tmp_path / "music.safetensors"
    assert stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044  # readable by group and others
    r = runner.invoke(app, ["steer", "-v", str(f), "-s", "4", "-p", "Hi", "-n", "2", *m])
    assert r.exit_code == 0 and "-s is now --scale" in r.output and "x 4" in r.output, r.output
    r = runner.invoke(root, ["generate", "-p", "Hi", "-n", "2", "--steer", f"{f}:4", "-q", *m])
    assert r.exit_code == 0 and "steered:" in r.output, r.output  # FILE:SCALE, site from the file
    r = runner.invoke(app, ["vector", "extract", "--word", "x", "--sites", "resid_post.7",
                            "--out", str(tmp_path / "x"), *m])
    assert r.exit_code != 0 and "layers 0..3" in " ".join(r.output.split())
    r = runner.invoke(app, ["steer", "sweep", "--concept", "x", "--layers", "1,9", "--out",
                            str(tmp_path / "s"), *m])
    assert r.exit_code != 0 and "layers 0..3" in " ".join(r.output.split())
