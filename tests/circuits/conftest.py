import pytest
import torch

from mindscope.circuits import TranscoderConfig, Transcoders


def random_transcoders(lm, kind="plt", activation="topk", skip=False, n=32, k=4, seed=0):
    """Random (untrained) transcoders of the right shapes for ``lm``, scaled so features fire."""
    cfg = TranscoderConfig(lm.n_layers, lm.d_model, n, k=k, kind=kind, activation=activation,
                           skip=skip, model=lm.name)
    tc = Transcoders(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tc.named_parameters():
            scale = 0.002 if name == "W_skip" else 0.3 if "W_" in name else 0.05
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        if activation == "jumprelu":
            tc.log_threshold.fill_(-1.0)
    return tc.eval().requires_grad_(False)


@pytest.fixture
def rand_tc():
    return random_transcoders


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    """A small folder of .txt documents (~4k tiny tokens)."""
    d = tmp_path_factory.mktemp("corpus")
    words = "the quick brown fox jumps over the lazy dog alice met bob in the garden".split()
    for i in range(8):
        (d / f"doc{i}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(150)))
    return d
