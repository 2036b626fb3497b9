import json

import pytest
from typer.testing import CliRunner

from mindscope.cli.evals import app
from mindscope.evals import load_items

runner = CliRunner()


def test_grade_command(tmp_path):
    items = load_items(limit=40)
    preds = {it.id: {"model": "x", "response": f"Explanation: .\nAnswer: {it.answer}\nConfidence: 70%"}
             for it in items.items[:30]}
    p = tmp_path / "hle_x.json"
    p.write_text(json.dumps(preds))
    r = runner.invoke(app, ["grade", str(p), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert m["n_correct"] == 30 and m["accuracy"] == pytest.approx(75.0)
    assert m["generation_errors"] == 10


def test_run_rejects_unknown_task(tmp_path):
    r = runner.invoke(app, ["run", "--task", "mmlu", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "unknown task" in r.output


def test_run_on_tiny_model(tmp_path, tiny, monkeypatch):
    import torch
    from safetensors.torch import save_file

    import mindscope as ms
    lm = tiny("llama")
    monkeypatch.setattr(ms, "load", lambda *a, **k: lm)
    save_file({"v": torch.randn(lm.d_model)}, str(tmp_path / "v.safetensors"))
    r = runner.invoke(app, ["run", "--limit", "3", "--max-new-tokens", "4", "--out", str(tmp_path / "o"),
                            "--steer", f"{tmp_path / 'v.safetensors'}@resid_post.1:5"])
    assert r.exit_code == 0, r.output
    assert "baseline" in r.output and "steered" in r.output
    assert (tmp_path / "o" / "steered" / "results.json").exists()


def test_rerun_with_other_settings_is_refused(tmp_path, tiny, monkeypatch):
    """Issue 25 item 2: the demo's settings guard: another steering scale or judge into the same
    folder is refused naming the differing keys; the same settings resume."""
    import torch
    from safetensors.torch import save_file

    import mindscope as ms
    from mindscope.cli import app as root

    lm = tiny("llama")
    monkeypatch.setattr(ms, "load", lambda *a, **k: lm)
    v = str(tmp_path / "v.safetensors")
    save_file({"v": torch.randn(lm.d_model)}, v)
    base = ["eval", "--limit", "2", "-n", "3", "-o", str(tmp_path / "o"), "-q"]
    r = runner.invoke(root, [*base, "--steer", f"{v}@resid_post.1:5"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(root, [*base, "--steer", f"{v}@resid_post.1:2"])
    assert r.exit_code == 2 and "responder.interventions" in r.output and "other settings" in r.output
    r = runner.invoke(root, [*base, "--steer", f"{v}@resid_post.1:5", "--judge", "rule-lenient"])
    assert r.exit_code == 2 and "judge." in r.output
    r = runner.invoke(root, [*base, "--steer", f"{v}@resid_post.1:5"])  # same settings: resumes
    assert r.exit_code == 0, r.output


def test_counts_are_validated(tmp_path, tiny):
    """Item 3: `--limit -2` and max_new_tokens=-1 are refused, not silently run."""
    from mindscope.cli import app as root

    r = runner.invoke(root, ["eval", "sample", "--limit", "-2", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "--limit" in r.output
    with pytest.raises(ValueError, match="limit"):
        load_items(limit=-2)
    lm = tiny("llama")
    with pytest.raises(ValueError, match="max_new_tokens"):
        lm.generate(["hi"], max_new_tokens=-1)
    with pytest.raises(ValueError, match="batch_size"):
        lm.capture(["hi"], sites="resid_post.1", batch_size=0)
    r = runner.invoke(root, ["eval", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no such file" in r.output and len(r.output.splitlines()) <= 2
