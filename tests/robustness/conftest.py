"""Shared fixtures of the robustness suite: a tiny store, SAE folders, a saved tiny model for
subprocesses, and a guard that fails any test in which something is unpickled."""
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

L = 32


@pytest.fixture(autouse=True)
def no_pickle(monkeypatch):
    """Nothing mindscope reads may go through pickle: the loaders are patched to fail."""
    import torch

    def refuse(*a, **k):
        raise AssertionError("something was loaded with pickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    real_np_load = np.load

    def np_load(*a, **k):
        assert not k.get("allow_pickle"), "np.load with allow_pickle=True"
        return real_np_load(*a, **k)

    monkeypatch.setattr(np, "load", np_load)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rcorpus")
    words = "the quick brown fox jumps over the lazy dog alice met bob in the garden".split()
    for i in range(6):
        (d / f"doc{i}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(150)))
    with open(d / "recs.jsonl", "w") as fh:
        for i in range(10):
            fh.write(json.dumps({"text": f"Trial {i}: do you detect an injected thought? " * 3}) + "\n")
    return d



@pytest.fixture(scope="session")
def store(tiny, corpus_dir, tmp_path_factory):
    """A 4-shard store of resid_post.1 (float32)."""
    from mindscope.activations import harvest

    out = tmp_path_factory.mktemp("rstore") / "acts"
    return harvest(tiny("llama"), out, sites="resid_post.1", corpus=corpus_dir,
                   n_tokens=16 * L, window=L, shard_tokens=4 * L, batch_size=4, progress=False)


@pytest.fixture(scope="session")
def sae_dirs(tmp_path_factory):
    """The same small topk SAE in our layout, SAELens' and sparsify's."""
    import torch

    from mindscope.sae import SAE, SAEConfig, export_saelens, export_sparsify

    torch.manual_seed(0)
    sae = SAE(SAEConfig("topk", 64, 128, k=4, model="tiny", site="resid_post.1"))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_()
        sae.b_dec.normal_()
    root = tmp_path_factory.mktemp("rsae")
    return {"sae": sae, "ours": sae.save(root / "ours"),
            "saelens": export_saelens(sae, root / "saelens"),
            "sparsify": export_sparsify(sae, root / "sparsify")}
