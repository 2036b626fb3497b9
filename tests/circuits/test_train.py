"""Transcoders from the store: one harvest pass for every layer's MLP input and output, PLT /
skip / CLT training that lowers the error, a killed run that resumes bit-for-bit, the spliced
model against the real one, and clear errors for stores and folders that do not fit."""
import pytest
import torch

from mindscope.activations import ActivationStore
from mindscope.circuits import (TrainSettings, TranscoderConfig, Transcoders, check_transcoders,
                                harvest_mlp, splice, spliced_loss, train_transcoders,
                                transcoder_metrics)
from mindscope.core import BadInputError

L = 32


@pytest.fixture(scope="module")
def mlp_store(tiny, text_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp")
    return harvest_mlp(tiny("llama"), out, corpus=text_corpus, n_tokens=48 * L, window=L,
                       shard_tokens=8 * L, batch_size=8, progress=False)


def test_harvest_writes_every_layer_in_and_out_matching_the_mlp(mlp_store, tiny):
    lm = tiny("llama")
    assert mlp_store.sites == [f"mlp_in.{l}" for l in range(4)] + [f"mlp_out.{l}" for l in range(4)]
    x, y = mlp_store.activations("mlp_in.2", 0), mlp_store.activations("mlp_out.2", 0)
    with torch.no_grad():  # the stored output is the MLP applied to the stored input
        assert torch.allclose(lm.block(2).mlp(x), y, atol=1e-5)


@pytest.mark.parametrize("kind,act,skip", [("plt", "topk", False), ("plt", "jumprelu", True),
                                           ("clt", "topk", False), ("clt", "relu", True)])
def test_training_lowers_fvu_on_every_layer(mlp_store, tmp_path, kind, act, skip):
    cfg = TranscoderConfig(4, 64, 64, k=8, kind=kind, activation=act, skip=skip)
    st = TrainSettings(steps=60, batch_size=128, lr=3e-3, checkpoint_every=20)
    tc = train_transcoders(mlp_store, tmp_path / "tc", cfg, st, progress=False)
    import json
    hist = json.loads((tmp_path / "tc" / "history.json").read_text())
    first, last = torch.tensor(hist[0]["fvu"]), torch.tensor(hist[-1]["fvu"])
    assert bool((last < first).all()) and float(last.mean()) < 0.8
    again = Transcoders.load(tmp_path / "tc")
    x = torch.randn(3, 4, 64)
    assert torch.allclose(again(x), tc(x), atol=1e-6)
    assert again.cfg.model == mlp_store.manifest["model"]


def test_killed_run_resumes_to_the_same_weights(mlp_store, tmp_path, monkeypatch):
    cfg = TranscoderConfig(4, 64, 32, k=4)
    st = TrainSettings(steps=30, batch_size=64, lr=1e-3, checkpoint_every=10)
    full = train_transcoders(mlp_store, tmp_path / "a", cfg, st, progress=False)
    from mindscope.circuits import _train
    real = _train._save_ckpt
    calls = {"n": 0}

    def dying(*a, **k):
        real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed right after the step-20 checkpoint

    monkeypatch.setattr(_train, "_save_ckpt", dying)
    with pytest.raises(KeyboardInterrupt):
        train_transcoders(mlp_store, tmp_path / "b", TranscoderConfig(4, 64, 32, k=4), st,
                          progress=False)
    monkeypatch.setattr(_train, "_save_ckpt", real)
    assert (tmp_path / "b" / "checkpoint.safetensors").exists()
    resumed = train_transcoders(mlp_store, tmp_path / "b", TranscoderConfig(4, 64, 32, k=4), st,
                                progress=False)
    for (n, p), (_, q) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(p, q, atol=1e-6), n


def test_splice_with_error_kept_is_the_model_and_metrics_are_sane(mlp_store, tiny, tmp_path):
    lm = tiny("llama")
    tc = train_transcoders(mlp_store, tmp_path / "tc", TranscoderConfig(4, 64, 64, k=8),
                           TrainSettings(steps=40, batch_size=128, lr=3e-3), progress=False)
    texts = ["the quick brown fox jumps over the lazy dog", "alice met bob in the garden"]
    clean = lm.forward(texts)
    with splice(lm, tc, keep_error=True):
        same = lm.forward(texts)
    assert torch.allclose(same, clean, atol=1e-4)
    with splice(lm, tc, keep_error=True, edits={(1, 3, 5): 10.0}):
        edited = lm.forward(texts)
    assert not torch.allclose(edited[:, 3:], clean[:, 3:], atol=1e-3)
    assert torch.allclose(edited[0, :3], clean[0, :3], atol=1e-4)  # causal: earlier tokens kept
    m = transcoder_metrics(lm, tc, texts, store=mlp_store)
    assert m["ce_clean"] == pytest.approx(float(lm.loss(texts)), rel=1e-5) and len(m["layers"]) == 4
    r = (m["ce_zero"] - m["ce_spliced"]) / (m["ce_zero"] - m["ce_clean"])
    assert m["replacement_score"] == pytest.approx(r)
    assert all(0 < layer["fvu"] < 1.5 for layer in m["layers"])
    assert m["ce_spliced"] == pytest.approx(spliced_loss(lm, tc, texts))


def test_mismatched_transcoders_and_stores_are_refused(mlp_store, tiny, tmp_path):
    lm = tiny("llama")
    with pytest.raises(BadInputError, match="missing"):
        check_transcoders(lm, Transcoders(TranscoderConfig(3, 64, 16, k=2, model=lm.name)))
    with pytest.raises(BadInputError, match="not"):
        check_transcoders(lm, Transcoders(TranscoderConfig(4, 64, 16, k=2, model="gpt-x")))
    with pytest.raises(BadInputError, match="d_model"):
        train_transcoders(mlp_store, tmp_path / "x", TranscoderConfig(4, 32, 16, k=2),
                          TrainSettings(steps=2), progress=False)
    with pytest.raises(BadInputError, match="mlp_in.5"):
        train_transcoders(mlp_store, tmp_path / "x", TranscoderConfig(6, 64, 16, k=2),
                          TrainSettings(steps=2), progress=False)
    (tmp_path / "bad").mkdir()
    with pytest.raises(BadInputError, match="transcoder folder"):
        Transcoders.load(tmp_path / "bad")
    tc = Transcoders(TranscoderConfig(4, 64, 16, k=2))
    with torch.no_grad():
        tc.W_enc[0, 0, 0] = float("nan")
    tc.save(tmp_path / "nan")
    with pytest.raises(BadInputError, match="NaN"):
        Transcoders.load(tmp_path / "nan")


def test_per_layer_metrics_match_a_naive_computation(mlp_store, tiny, tmp_path):
    """FVU, L0 and dead fraction per layer against a loop over the held-out rows; the per-layer
    CE and KL against log-softmaxes of the spliced model computed by hand (PLT and CLT)."""
    lm = tiny("llama")
    texts = ["the quick brown fox jumps over the lazy dog", "alice met bob in the garden"]
    b = lm.tokenize(texts)
    mask = (b.attention_mask[:, 1:] * b.attention_mask[:, :-1]).bool()
    with torch.no_grad():
        clean = lm.forward(texts)[:, :-1].float().log_softmax(-1)[mask]          # (N, V)
    for kind in ("plt", "clt"):
        tc = train_transcoders(mlp_store, tmp_path / kind,
                               TranscoderConfig(4, 64, 64, kind=kind, activation="jumprelu"),
                               TrainSettings(steps=20, batch_size=128, lr=3e-3), progress=False)
        m = transcoder_metrics(lm, tc, texts, store=mlp_store)
        rows = [(x, y) for x, y in mlp_store.paired_reader(
            1024, [f"mlp_in.{l}" for l in range(4)], [f"mlp_out.{l}" for l in range(4)],
            shuffle=False, split="heldout")]
        x, y = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
        assert m["heldout_rows"] == x.shape[0] > 0
        for l in range(4):
            a = torch.stack([tc.encode_layer(x[i, l], l) for i in range(x.shape[0])])  # (N, n)
            acts = [torch.stack([tc.encode_layer(x[i, j], j) for i in range(x.shape[0])])
                    for j in range(4)]
            y_hat = tc.decode_layer(acts, x[:, l], l).detach()
            fvu = float((y[:, l] - y_hat).pow(2).sum() / (y[:, l] - y[:, l].mean(0)).pow(2).sum())
            got = m["layers"][l]
            assert got["fvu"] == pytest.approx(fvu, rel=1e-4)
            assert got["l0"] == pytest.approx(float((a != 0).sum(-1).float().mean()), rel=1e-6)
            assert got["dead"] == pytest.approx(float((a == 0).all(0).float().mean()))
            with torch.no_grad(), splice(lm, tc, [l], first=b.attention_mask.cumsum(-1) <= 1):
                lp = lm.forward(texts)[:, :-1].float().log_softmax(-1)[mask]
            kl = float((clean.exp() * (clean - lp)).sum(-1).mean())
            ce = float(-lp.gather(-1, b.input_ids[:, 1:][mask][:, None]).mean())
            assert got["kl_spliced"] == pytest.approx(kl, rel=1e-3, abs=1e-6) and kl > 0
            assert got["ce_spliced"] == pytest.approx(ce, rel=1e-5)
        assert m["kl_spliced"] > 0 and m["ce_clean"] == pytest.approx(float(lm.loss(texts)),
                                                                      rel=1e-5)


def test_bfloat16_training_tracks_float32(mlp_store, tmp_path):
    """Mixed precision (bf16 matmuls under autocast, fp32 weights) reaches about the same FVU."""
    cfg = dict(n_layers=4, d_model=64, n_latents=64, k=8)
    f = {}
    for dt in ("float32", "bfloat16"):
        train_transcoders(mlp_store, tmp_path / dt, TranscoderConfig(**cfg),
                          TrainSettings(steps=40, batch_size=128, lr=3e-3, dtype=dt),
                          progress=False)
        import json
        f[dt] = torch.tensor(json.loads((tmp_path / dt / "history.json").read_text())[-1]["fvu"])
    assert float(f["bfloat16"].mean()) < 0.8
    assert torch.allclose(f["bfloat16"], f["float32"], atol=0.05)
    with pytest.raises(ValueError, match="float16"):
        TrainSettings(dtype="float16")
