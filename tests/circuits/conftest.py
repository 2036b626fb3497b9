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

