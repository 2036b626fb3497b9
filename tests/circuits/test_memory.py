"""Memory of attribution graphs: ``TensorPeak`` against allocations counted by hand, and
``memory_estimate`` against ``TensorPeak``'s exact count of a graph's tensor bytes (both
deterministic: the count does not depend on the allocator or the machine's load)."""
import pytest
import torch

from mindscope.circuits import GraphConfig, TensorPeak, Transcoders, attribute, memory_estimate
from mindscope.core import BadInputError

from .conftest import random_transcoders


def test_tensor_peak_counts_allocations_not_views_or_inputs():
    w = torch.ones(1000)                                    # made outside: never counted
    with TensorPeak() as tp:
        a = torch.zeros(1000)                               # 4000 bytes
        b = a + 1                                           # 4000 more: peak 8000
        v = b[::2]                                          # a view: nothing new
        b.mul_(2)                                           # in place: nothing new
        w2 = w.view(10, 100)                                # a view of an outside tensor
        del a
        c = torch.empty(500, dtype=torch.float64)           # 4000: live 8000 again
        del b                                               # b's storage lives on in v
        assert tp.live == 8000
        del v
        assert tp.live == 4000
        d = w2.sum(0)                                       # 100 floats
    assert tp.peak == 8000 and tp.live == 4000 + 400
    assert c.numel() == 500 and d.shape == (100,)


@pytest.mark.parametrize("kind,act,skip,T,mf", [
    ("plt", "jumprelu", False, 12, 4096),   # every active feature a row
    ("plt", "topk", True, 24, 4096),        # skip maps
    ("clt", "topk", False, 24, 16),         # a feature budget: influence rounds
    ("clt", "jumprelu", False, 12, 4096),
])
def test_estimate_matches_counted_peak(tiny, kind, act, skip, T, mf):
    lm = tiny("llama")
    tc = random_transcoders(lm, kind=kind, activation=act, skip=skip, n=64)
    ids = torch.randint(3, lm.vocab_size, (T,), generator=torch.Generator().manual_seed(T))
    cfg = GraphConfig(batch_size=16, max_feature_nodes=mf)
    with TensorPeak() as tp:
        g = attribute(lm, tc, ids, cfg, progress=False)
    st = g.stats
    # given the kept edges per row (the last unknown), the estimate is the counted peak
    per_row = st["edges_kept"] / (min(mf, st["active_features"]) + len(g.logit_tokens))
    est = memory_estimate(lm, tc, T, 16, mf, cfg.max_row_edges, n_feat=st["active_features"],
                          edges_per_row=per_row)
    assert est == st["estimate_final_bytes"]
    assert 0.8 * tp.peak < est < 1.25 * tp.peak, (est, tp.peak)
    if mf >= st["active_features"]:  # the in-run estimate (first batch's edges) is close too
        assert 0.8 * tp.peak < st["estimate_bytes"] < 1.3 * tp.peak


def test_refusal_uses_the_in_run_estimate(tiny, monkeypatch):
    """A budget the guess passes but the kept edges of the first batch exceed: refused after
    that batch, with the measured rate in the message."""
    from mindscope.circuits import _memory
    monkeypatch.setattr(_memory, "EDGES_PER_ROW_GUESS", 4)   # far below what these rows keep
    lm = tiny("llama")
    tc = random_transcoders(lm, activation="jumprelu", n=64)
    ids = torch.randint(3, lm.vocab_size, (16,), generator=torch.Generator().manual_seed(16))
    g = attribute(lm, tc, ids, GraphConfig(batch_size=16), progress=False)
    st = g.stats
    assert st["estimate_forward_bytes"] < 0.7 * st["estimate_bytes"]
    gb = (st["estimate_forward_bytes"] + st["estimate_bytes"]) / 2 / 2 ** 30
    with pytest.raises(BadInputError, match="kept edges per row"):
        attribute(lm, tc, ids, GraphConfig(batch_size=16, max_memory_gb=gb), progress=False)


def test_transcoders_load_memory_mapped_copy_on_write(tiny, tmp_path):
    lm = tiny("llama")
    tc = random_transcoders(lm, activation="jumprelu")
    tc.save(tmp_path / "tc")
    a = Transcoders.load(tmp_path / "tc")
    assert torch.equal(a.W_enc, tc.W_enc) and torch.equal(a.s_in, tc.s_in)
    assert not any(p.is_meta for p in a.parameters()) and not a.s_in.is_meta
    with torch.no_grad():
        a.W_enc.add_(1.0)                 # a write copies the page, never the file
    assert torch.equal(Transcoders.load(tmp_path / "tc").W_enc, tc.W_enc)
