import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from mindscope.cli import app

runner = CliRunner()


def test_help_and_models():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "models" in r.output and "generate" in r.output
    r = runner.invoke(app, ["models", "--json"])
    assert r.exit_code == 0 and "smollm2-135m-instruct" in r.output


def test_generate_errors_are_clear(tmp_path, tiny):
    lm = tiny("llama")
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    r = runner.invoke(app, ["generate", "-p", "hi", "--model", "nope-model"])
    assert r.exit_code != 0 and "unknown model" in r.output
    r = runner.invoke(app, ["generate", "-p", "hi", "--model", str(tmp_path / "m"),
                            "--steer", "bad-spec"])
    assert r.exit_code != 0 and "SCALE" in r.output
    save_file({"vector": torch.ones(10)}, str(tmp_path / "v.safetensors"))
    r = runner.invoke(app, ["generate", "-p", "hi", "--model", str(tmp_path / "m"),
                            "--steer", f"{tmp_path}/v.safetensors@resid_post.1:2"])
    assert r.exit_code != 0 and "d = 10" in r.output
    save_file({"vector": torch.ones(64)}, str(tmp_path / "v.safetensors"))
    r = runner.invoke(app, ["generate", "-p", "hi", "--model", str(tmp_path / "m"),
                            "--steer", f"{tmp_path}/v.safetensors@resid_post.9:2"])
    assert r.exit_code != 0 and "unknown site" in r.output
    r = runner.invoke(app, ["generate", "-p", "hi", "--model", str(tmp_path / "m"), "-n", "3",
                            "--steer", f"{tmp_path}/v.safetensors@resid_post.1:2", "--compare"])
    assert r.exit_code == 0, r.output
    assert "unsteered:" in r.output and "steered:" in r.output
