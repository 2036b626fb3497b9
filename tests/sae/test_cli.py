"""CLI: train on a tiny harvested store, eval, convert, plan."""
import json

from typer.testing import CliRunner

from mindscope.activations import Corpus, harvest
from mindscope.cli.sae import app


def test_train_eval_convert_plan(tiny, tmp_path):
    lm = tiny("llama")
    words = "the quick brown fox jumps over the lazy dog alice met bob in the garden".split()
    (tmp_path / "c").mkdir()
    for i in range(8):
        (tmp_path / "c" / f"d{i}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(200)))
    harvest(lm, tmp_path / "store", sites="resid_post.1", corpus=Corpus(tmp_path / "c"),
            n_tokens=1600, window=32, shard_tokens=256, progress=False)
    r = CliRunner()
    res = r.invoke(app, ["train", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "run"),
                         "--latents", "128,256", "--k", "4", "--tokens", "2560", "--batch-size", "128",
                         "--eval-batches", "2", "--checkpoint-every", "5", "-q", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert len(summary) == 2 and all(0 < s["fvu"] < 1.5 for s in summary)
    d = tmp_path / "run" / summary[0]["name"]
    for f in ("cfg.json", "sae.safetensors", "metrics.json", "density.png", "training.png", "history.json"):
        assert (d / f).exists(), f
    assert json.loads((d / "cfg.json").read_text())["site"] == "resid_post.1"
    res = r.invoke(app, ["convert", "--sae", str(d), "-o", str(tmp_path / "sl"), "--to", "saelens"])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["eval", "--sae", str(tmp_path / "sl"), "--store", str(tmp_path / "store"),
                         "--batch-size", "128", "--batches", "2", "-q", "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output)["activations"]
    assert abs(ev["fvu"] - summary[0]["fvu"]) < 1e-3        # same SAE through the SAELens layout
    res = r.invoke(app, ["sweep", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "sw2"),
                         "--latents", "64,128", "--tokens", "512,1024", "--lrs", "0.5x,2x",
                         "--k", "4", "--batch-size", "128", "--eval-batches", "1", "-q"])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "sw2" / "sweep.json").read_text())["results"]
    assert sorted(round(x["lr"] / (2e-4 / (x["n_latents"] / 2 ** 14) ** 0.5), 6) for x in got) \
        == [0.5] * 4 + [2.0] * 4
    res = r.invoke(app, ["sweep", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "sw3"),
                         "--lrs", "fast", "-q"])
    assert res.exit_code != 0 and "--lrs" in res.output
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps({"d": 64, "laws": {
        "n_latents": {"a": 1.0, "b": 0.5}, "lr": {"a": 0.1, "b": -0.1}, "loss": {"a": 2.0, "b": -0.1},
        "key": "loss"}}))
    res = r.invoke(app, ["plan", "--budget", "1e12", "--sweep", str(tmp_path / "sw"), "--json"])
    assert res.exit_code == 0, res.output
    p = json.loads(res.output)
    assert p["n_latents"] == 2 ** 20 and p["tokens"] == int(1e12 / (6 * 64 * 2 ** 20))


def test_plan_prints_a_table(tmp_path):
    """Issue 25 item 14: a human table by default (JSON with --json)."""
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps({"d": 64, "laws": {
        "n_latents": {"a": 1.0, "b": 0.5}, "lr": {"a": 0.1, "b": -0.1}, "loss": {"a": 2.0, "b": -0.1},
        "key": "loss"}}))
    res = CliRunner().invoke(app, ["plan", "--budget", "1e12", "--sweep", str(tmp_path / "sw")])
    assert res.exit_code == 0 and "n_latents" in res.output and "{" not in res.output
    assert "1048576" in res.output.replace(",", "")
