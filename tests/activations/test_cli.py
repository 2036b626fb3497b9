import json

import pytest
import typer
from typer.testing import CliRunner

from mindscope.activations import ActivationStore
from mindscope.cli.activations import app, parse_count

runner = CliRunner()


def test_parse_count():
    assert parse_count("2M") == 2_000_000 and parse_count("500k") == 500_000
    assert parse_count("1.5m") == 1_500_000 and parse_count("12_345") == 12345
    with pytest.raises(typer.BadParameter):
        parse_count("lots")


def test_harvest_and_corpus_info(tiny_dir, text_corpus, tmp_path):
    r = runner.invoke(app, ["harvest", "--model", str(tiny_dir), "--corpus", str(text_corpus),
                            "--sites", "resid_post.1", "--tokens", "256", "--window", "32",
                            "--out", str(tmp_path / "s"), "--quiet"])
    assert r.exit_code == 0, r.output
    store = ActivationStore.open(tmp_path / "s")
    assert store.manifest["n_tokens_processed"] == 256 and "rows x 64" in r.output
    r = runner.invoke(app, ["corpus", "info", str(text_corpus), "--model", str(tiny_dir), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["docs"] == {"text": 27, "chat": 10} and info["tokens"][str(tiny_dir)] > 1000


def test_harvest_errors_are_clear(tiny_dir, tmp_path, monkeypatch):
    """Checked before the model loads: the corpus path, sites beyond the model's blocks, counts;
    a corpus shorter than one window is one clear line (issue 25 items 4 and 9)."""
    from mindscope.cli import app as root

    monkeypatch.setenv("MINDSCOPE_CACHE", str(tmp_path / "cache"))
    r = runner.invoke(root, ["harvest", "--model", str(tiny_dir), "--corpus", str(tmp_path / "no"),
                             "--sites", "resid_post.1", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "no such file or folder" in r.output
    r = runner.invoke(root, ["harvest", "--model", str(tiny_dir), "--sites", "resid_post.99",
                             "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "layers 0..3" in r.output
    r = runner.invoke(root, ["harvest", "--model", str(tiny_dir), "--tokens", "-5",
                             "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "must be > 0" in r.output
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "a.txt").write_text("just a few words")
    r = runner.invoke(root, ["harvest", "--model", str(tiny_dir), "--corpus", str(tmp_path / "short"),
                             "-s", "resid_post.1", "--tokens", "256", "--window", "32", "-q",
                             "--out", str(tmp_path / "s2")])
    assert r.exit_code == 2 and "fewer than one window of 32" in r.output, r.output
    assert "-s is now --sites" in r.output and "Traceback" not in r.output
