"""The local SAE registry (issue 25 item 13) and held-out evaluation of small stores (item 1)."""
import json

import pytest
import torch
from typer.testing import CliRunner

from mindscope.cli import app
from mindscope.sae import SAE, SAEConfig, heldout_batches, list_saes, load_any, register

runner = CliRunner()


def _sae(tmp_path, n=128):
    torch.manual_seed(0)
    sae = SAE(SAEConfig("topk", 16, n, k=4, model="/models/tiny-llama", site="resid_post.1"))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_()
    return sae, sae.save(tmp_path / "sae")


def test_register_load_and_list(tmp_path, monkeypatch):
    monkeypatch.setenv("MINDSCOPE_SAE_REGISTRY", str(tmp_path / "reg"))
    sae, folder = _sae(tmp_path)
    (folder / "metrics.json").write_text(json.dumps({"fvu": 0.25, "l0": 4.0}))
    name = register(folder)
    assert name == "tiny-llama/resid_post.1/topk-128"
    assert (tmp_path / "reg" / name / "release.json").is_file()
    got = SAE.load(name)
    assert torch.equal(got.W_enc, sae.W_enc) and torch.equal(load_any(name).W_dec, sae.W_dec)
    (row,) = list_saes()
    assert (row["name"], row["hook_name"], row["d_sae"], row["d_in"]) == (name, "resid_post.1", 128, 16)
    assert row["variance_explained"] == pytest.approx(0.75) and row["exists"]
    r = runner.invoke(app, ["sae", "list"])
    assert r.exit_code == 0 and "tiny-llama/resid_post.1/topk-128" in " ".join(r.output.split())
    r = runner.invoke(app, ["sae", "list", "--json"])
    assert json.loads(r.output)[0]["architecture"] == "topk"
    r = runner.invoke(app, ["sae", "register", "--sae", str(folder), "--name", "mine/v1"])
    assert r.exit_code == 0 and SAE.load("mine/v1").cfg.n_latents == 128


def test_hub_names_fail_offline_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("MINDSCOPE_SAE_REGISTRY", str(tmp_path / "reg"))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        SAE.load("gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        SAE.load("jbloom/GPT2-Small-SAEs-Reformatted")
    with pytest.raises(FileNotFoundError, match="no such SAE folder"):
        SAE.load(str(tmp_path / "nothing"))
    r = runner.invoke(app, ["sae", "eval", "--sae", "google/gemma-scope", "--store", str(tmp_path)])
    assert r.exit_code == 2 and "never downloads" in r.output and len(r.output.splitlines()) <= 2


def test_heldout_smaller_than_a_batch_is_evaluated(tiny, tmp_path):
    """Item 1: 'sae eval' with the default batch 4096 on a store whose held-out split is smaller."""
    from mindscope.activations import ActivationStore, Corpus, harvest

    lm = tiny("llama")
    (tmp_path / "c").mkdir()
    for i in range(20):
        (tmp_path / "c" / f"d{i}.txt").write_text(f"document {i} " + "alpha beta gamma " * 30)
    harvest(lm, tmp_path / "store", sites="resid_post.1", corpus=Corpus(tmp_path / "c"),
            n_tokens=1200, window=32, shard_tokens=256, progress=False)
    store = ActivationStore.open(tmp_path / "store")
    rows = sum(b.shape[0] for b in store.reader(10_000, split="heldout", shuffle=False))
    assert 0 < rows < 4096
    batches = heldout_batches(store, 4096)
    assert sum(b.shape[0] for b in batches) == rows  # the partial batch is kept
    sae = SAE(SAEConfig("topk", lm.d_model, 64, k=4, site="resid_post.1"))
    sae.save(tmp_path / "sae")
    r = runner.invoke(app, ["sae", "eval", "--sae", str(tmp_path / "sae"), "--store",
                            str(tmp_path / "store"), "--json", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["activations"]["rows"] + \
        json.loads(r.output)["activations"]["excluded_rows"] == rows
