"""CLI: harvest -> train -> graph -> export on the tiny llama (saved as a model folder), and the
clear refusals (bad numbers, a prompt over the memory budget, transcoders of another model)."""
import json

from typer.testing import CliRunner

from mindscope.cli.circuits import app


def test_harvest_train_graph_export(tiny_dir, tmp_path, text_corpus):
    model = tiny_dir
    r = CliRunner()
    res = r.invoke(app, ["harvest", "-o", str(tmp_path / "acts"), "-m", str(model), "--tokens",
                         "1536", "--corpus", str(text_corpus), "--dtype", "float32", "-q"])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["train", "--store", str(tmp_path / "acts"), "-o", str(tmp_path / "tc"),
                         "--latents", "32", "--activation", "jumprelu", "--steps", "6",
                         "--batch-size", "64", "--skip", "--dtype", "bfloat16", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "tc" / "cfg.json").read_text())["meta"]["train"]["dtype"] == \
        "bfloat16"
    res = r.invoke(app, ["graph", "The quick brown fox", "--transcoders", str(tmp_path / "tc"),
                         "-o", str(tmp_path / "g"), "-m", str(model), "--slug", "fox", "-q"])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "g" / "fox.json").read_text())
    assert d["metadata"]["prompt"] == "The quick brown fox" and d["nodes"]
    res = r.invoke(app, ["export", "--transcoders", str(tmp_path / "tc"), "-o",
                         str(tmp_path / "ct"), "-m", str(model)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ct" / "layer_3.safetensors").exists()
    # refusals: a prompt over the budget (with the estimate), bad numbers, wrong model
    res = r.invoke(app, ["graph", "fox " * 200, "--transcoders", str(tmp_path / "tc"), "-o",
                         str(tmp_path / "g2"), "-m", str(model), "--max-memory", "0.01", "-q"])
    assert res.exit_code == 2 and "GiB" in res.output
    res = r.invoke(app, ["train", "--store", str(tmp_path / "acts"), "-o", str(tmp_path / "x"),
                         "--steps", "0"])
    assert res.exit_code != 0 and "--steps" in res.output
    res = r.invoke(app, ["train", "--store", str(tmp_path / "acts"), "-o", str(tmp_path / "x"),
                         "--dtype", "float16"])
    assert res.exit_code != 0 and "float16" in res.output
    cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    (tmp_path / "tc" / "cfg.json").write_text(json.dumps({**cfg, "model": "other-model"}))
    res = r.invoke(app, ["graph", "The fox", "--transcoders", str(tmp_path / "tc"), "-o",
                         str(tmp_path / "g3"), "-m", str(model), "-q"])
    assert res.exit_code == 2 and "other-model" in res.output
