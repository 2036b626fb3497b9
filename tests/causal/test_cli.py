import json

import pytest
import torch
from typer.testing import CliRunner

from mindscope.cli.causal import lens_app, patch_app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mindscope.testing import tiny_lm

    lm = tiny_lm("llama")
    d = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


def test_lens_run_json_matches_library(model_dir):
    import mindscope as ms
    import mindscope.causal as mc

    r = runner.invoke(lens_app, ["run", "-p", "Alice met Bob in the", "--target", " the", "-k", "3",
                                 "--json", "--model", str(model_dir)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    lm = ms.load(str(model_dir))
    ref = mc.logit_lens(lm, ["Alice met Bob in the"], target=" the", k=3, positions="last")
    assert [row["target_rank"] for row in out["layers"]] == ref.target_rank[:, 0].tolist()
    assert out["layers"][0]["target"] == " the" and len(out["layers"][0]["top"]) == 3


def test_lens_train_then_run(model_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog.\nAlice met Bob in the garden.\n")
    r = runner.invoke(lens_app, ["train", "--corpus", str(corpus), "--out", str(tmp_path / "tl"),
                                 "--steps", "5", "--model", str(model_dir)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "tl" / "tuned_lens.safetensors").is_file()
    r = runner.invoke(lens_app, ["run", "-p", "Alice met", "--tuned", str(tmp_path / "tl"),
                                 "--model", str(model_dir)])
    assert r.exit_code == 0 and "tuned lens" in r.output


def test_patch_run_writes_scores_and_heatmap(model_dir, tmp_path):
    from safetensors.torch import load_file

    args = ["run", "--clean", "A fox met Bob. Alice", "--corrupt", "A dog met Bob. Alice",
            "-a", " met", "-w", " the", "--sites", "resid_pre.*", "--model", str(model_dir)]
    r = runner.invoke(patch_app, args + ["--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    s = load_file(str(tmp_path / "p" / "scores.safetensors"))["scores"]
    assert s.shape == (4, 9)
    assert (tmp_path / "p" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    r = runner.invoke(patch_app, args + ["--heads", "--method", "attribution",
                                         "--out", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "h" / "patch.json").read_text())
    assert meta["method"] == "attribution" and meta["unit"] == "head"


def test_patch_errors_and_dla(model_dir, tmp_path):
    r = runner.invoke(patch_app, ["run", "--clean", "A fox met Bob. Alice", "--corrupt", "A dog",
                                  "-a", " met", "-w", " the", "--out", str(tmp_path / "x"),
                                  "--model", str(model_dir)])
    text = " ".join(r.output.replace("│", " ").split())  # undo rich's box wrapping
    assert r.exit_code != 0 and "same length" in text
    r = runner.invoke(patch_app, ["dla", "-p", "Alice met Bob in the", "-a", " met", "-w",
                                  " the", "--json", "--model", str(model_dir)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["top"]) == 10 and isinstance(out["total"], float)
    assert torch.isfinite(torch.tensor(out["total"]))


def test_target_without_leading_space_gets_a_note(model_dir):
    """Issue 25 item 5: `-t Paris` tracks 'Paris' while the model writes ' Paris': say so."""
    import mindscope as ms
    from mindscope.causal import space_hint

    lm = ms.load(str(model_dir))
    assert "' the'" in space_hint(lm, "the") and space_hint(lm, " the") is None
    r = runner.invoke(lens_app, ["run", "-p", "Alice met Bob in", "-t", "the", "--model",
                                 str(model_dir)])
    assert "note: target 'the' has no leading space" in r.output
    assert "-t is now --target" in r.output
    r = runner.invoke(patch_app, ["dla", "-p", "Alice met Bob in the", "-a", "met", "-w", " the",
                                  "--model", str(model_dir)])
    assert "target 'met' has no leading space" in " ".join(r.output.split())
