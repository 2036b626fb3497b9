"""sae bench: scorers checked on constructed data, the suite end to end on a tiny model, and
bad input (wrong model / site / width, too few labelled rows, a task with no offline data)."""
import json

import numpy as np
import pytest
import torch

from mindscope.core import BadInputError
from mindscope.sae import SAE, BenchConfig, SAEConfig, bench, check_sae, write_bench
from mindscope.sae._bench import first_letter, token_class
from mindscope.sae._bench_tasks import absorption, detection, sparse_probing, task_rows, tpp
from mindscope.testing import tiny_lm


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def _sae(d=64, n=128, site="resid_post.2", model="tiny-llama"):
    s = SAE(SAEConfig("topk", d, n, k=8, site=site, model=model))
    with torch.no_grad():
        s.W_enc.normal_(); s.W_dec.normal_().div_(8)
    return s


def test_token_labels():
    assert [first_letter(t) for t in [" Apple", "b", " 12", "é"]] == ["a", None, None, None]
    assert [token_class(t) for t in [" the", "42", " ,", "\n", "a1"]] == \
        ["word", "number", "punct", "space", None]


def test_sparse_probe_finds_the_one_latent_that_carries_the_label():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    codes = torch.tensor(rng.random((400, 50)), dtype=torch.float32)
    codes[:, 7] = torch.tensor(y * 2.0 + rng.random(400) * 0.1)
    x = torch.randn(400, 8)
    rows = task_rows(list(np.where(y == 1, "a", "b")), 20, "t")
    r = sparse_probing(codes, x, rows, (1, 5), seed=0)
    assert r["k=1"] == 1.0 and r["dense"] < 0.7                  # x carries nothing


def test_absorption_counts_a_silent_main_latent_with_an_aligned_substitute():
    rng = np.random.default_rng(0)
    d, n = 8, 600
    w = np.zeros(d); w[0] = 1
    y = rng.integers(0, 2, n)
    x = torch.tensor(rng.normal(size=(n, d)) + 3 * y[:, None] * w, dtype=torch.float32)
    W = torch.eye(4, d)                                          # latent 0 decodes along w
    codes = torch.zeros(n, 4)
    pos = np.nonzero(y)[0]
    codes[pos[: len(pos) // 2], 0] = 1.0                         # main latent on half
    codes[pos[len(pos) // 2:], 0] = 0.0
    W[1] = torch.tensor(w, dtype=torch.float32) * 0.5 + torch.eye(d)[1] * 0.5   # aligned other
    codes[pos[len(pos) // 2:], 1] = 1.0                          # ... fires on the rest
    rows = task_rows(list(np.where(y == 1, "a", None)), 20, "first_letter")
    r = absorption(codes, x, W, rows, seed=0, cos_min=0.1)
    assert 0.3 < r["absorption"] < 0.7 and r["absorption"] == pytest.approx(r["main_latent_silent"], abs=0.05)


def test_tpp_and_detection_on_separable_data():
    rng = np.random.default_rng(1)
    n, d = 300, 6
    y = rng.integers(0, 3, n)
    X = torch.tensor(rng.normal(size=(n, d)) * 0.3, dtype=torch.float32)
    W = torch.eye(3, d) * 2
    Z = torch.zeros(n, 3)
    Z[torch.arange(n), torch.tensor(y)] = 1.0
    X = X + Z @ W
    rows = task_rows([str(v) for v in y], 20, "corpus_kind")
    r = tpp(X, Z, W, rows, seed=0, m=1)
    assert r["target_drop"] > 0.3 and r["tpp"] > 0.2
    toks = [["cat", "dog", "eel"][v] for v in y]
    det = detection(Z, toks, seed=0, n_latents=3, min_acts=5)
    assert det["detection"] == 1.0                               # latent j fires exactly on word j


def test_bench_end_to_end_on_a_tiny_model(lm, tmp_path):
    cfg = BenchConfig(n_docs=6, max_chars=120, seeds=2, ks=(1,), min_per_class=2,
                      autointerp_latents=5, tasks=("corpus_kind", "token_class"))
    res = bench({"a": _sae(), "b": _sae(n=64)}, lm, cfg, progress=False)
    assert set(res["saes"]) == {"a", "b"} and "scr" in res["missing"]
    r = res["saes"]["a"]
    assert r["l0"] == pytest.approx(8.0) and r["rows"] > 100
    for k in ("probe/corpus_kind/k=1", "probe/token_class/dense", "tpp/tpp", "detection"):
        assert r["scores"][k]["n"] == 2 and 0 <= r["scores"][k]["mean"] <= 1 or k == "tpp/tpp"
    assert "ce_increase" in r and "kl" in r
    write_bench(res, tmp_path)
    assert json.loads((tmp_path / "bench.json").read_text())["model"] == "tiny-llama"
    assert (tmp_path / "pareto.png").stat().st_size > 1000


def test_bad_input(lm):
    with pytest.raises(BadInputError, match="d_model 64"):
        check_sae(_sae(d=32), lm)
    with pytest.raises(BadInputError, match="site 'resid_post.9'"):
        check_sae(_sae(site="resid_post.9"), lm)
    with pytest.raises(BadInputError, match="trained on 'other-model'"):
        check_sae(_sae(model="other-model"), lm)
    with pytest.raises(BadInputError, match="spurious-correlation removal"):
        BenchConfig(tasks=("scr",))
    with pytest.raises(BadInputError, match="not bench tasks"):
        BenchConfig(tasks=("sentiment",))
    with pytest.raises(BadInputError, match="too few labelled rows"):
        bench({"a": _sae()}, lm, BenchConfig(n_docs=3, max_chars=50, min_per_class=50,
                                             tasks=("corpus_kind",), core=False), progress=False)
    with pytest.raises(BadInputError, match="no SAEs"):
        bench({}, lm)


def test_cli_bench_writes_json_plot_and_page(lm, tmp_path):
    from typer.testing import CliRunner

    from mindscope.cli.sae import app

    mdir = tmp_path / "tiny-model"
    lm.model.save_pretrained(mdir)
    lm.tokenizer.save_pretrained(mdir)
    _sae(model="").save(tmp_path / "s1")
    r = CliRunner().invoke(app, ["bench", "--sae", str(tmp_path / "s1"), "-m", str(mdir),
                                 "-o", str(tmp_path / "out"), "--docs", "6", "--seeds", "1",
                                 "--tasks", "token_class", "--no-core",
                                 "--autointerp-latents", "3", "-q"])
    assert r.exit_code == 0, r.output
    assert {"bench.json", "pareto.png", "report.html"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert "SAE bench" in (tmp_path / "out" / "report.html").read_text()
