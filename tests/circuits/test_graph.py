"""Attribution graphs on a tiny llama against references: HF hidden states (the frozen linear
model reproduces the real forward), finite differences of the linear model (each edge), the
completeness identity (edges into a node + constants = its value), and pruning invariants."""
import pytest
import torch

from mindscope.circuits import GraphConfig, attribute, capture, prune
from mindscope.circuits._graph import prepare_ids
from mindscope.core import BadInputError

from .conftest import random_transcoders

PROMPT = "The quick brown fox jumps over the lazy dog"
EXACT = GraphConfig(keep_mass=1.0, max_row_edges=10 ** 6, batch_size=16)


def _outs(lin, src_feats, acts, tc, error, scale=None):
    """The per-layer MLP outputs (1, L, T, d) of the linear model from feature activations."""
    L, T = lin.L, lin.T
    dense = [torch.zeros(T, tc.cfg.n_latents) for _ in range(L)]
    for (l, p, i), a in zip(src_feats.tolist(), acts.tolist()):
        dense[l][p, i] = a
    outs = []
    for l in range(L):
        y = tc.decode_layer(dense, None, l).detach()                  # features + b_dec
        y[0] = lin.mlp_out[l, 0] - (lin.mlp_in[l, 0] @ tc.skip_matrix(l).T if tc.cfg.skip else 0)
        outs.append(y + error[l])
    return torch.stack(outs)[None]


@pytest.mark.parametrize("kind,skip", [("plt", False), ("plt", True), ("clt", False)])
def test_edges_equal_finite_differences_and_sum_to_targets(tiny, kind, skip):
    lm = tiny("llama")
    tc = random_transcoders(lm, kind=kind, skip=skip)
    g = attribute(lm, tc, PROMPT, EXACT, progress=False)
    lin = capture(lm, tc, prepare_ids(lm, PROMPT))
    # 1. the frozen linear model run forward on the recorded inputs is the real model
    from mindscope.circuits._graph import _Sources
    src = _Sources(lin, tc)
    outs = _outs(lin, src.features, src.acts, tc, src.error)
    final, mlp_in = lin.forward(lin.embed[None], outs)
    assert torch.allclose(mlp_in[0], lin.mlp_in, atol=1e-4, rtol=1e-4)
    assert torch.allclose(final[0], lin.resid_final * lin.nf, atol=1e-4, rtol=1e-4)
    A = g.dense()
    nf = g.n_features
    assert nf == src.n_features if hasattr(src, "n_features") else nf == src.n_f
    W = lm.model.get_output_embeddings().weight.float().detach()
    vec = W[g.logit_tokens[0]] - W.mean(0)

    def logit_of(embed, feats_acts, error):
        fin, ins = lin.forward(embed[None], _outs(lin, src.features, feats_acts, tc, error))
        return float(fin[0, -1] @ vec), ins[0]

    base, _ = logit_of(lin.embed, src.acts, src.error)
    row = A[g.logit_index(0)]
    # 2. edges into the logit + the constant (everything at zero sources) = the logit
    const, _ = logit_of(torch.zeros_like(lin.embed), torch.zeros_like(src.acts),
                        torch.zeros_like(src.error))
    assert abs(row.sum() + const - base) < 1e-3 * (1 + abs(base))
    assert abs(g.target_values[g.logit_index(0)] - base) < 1e-3 * (1 + abs(base))
    # 3. each edge = finite difference of the linear model (sources are independent inputs)
    gen = torch.Generator().manual_seed(0)
    for j in torch.randint(0, nf, (6,), generator=gen).tolist():
        acts = src.acts.clone()
        acts[j] = 0
        val, _ = logit_of(lin.embed, acts, src.error)
        assert abs((base - val) - row[j]) < 1e-3 * (1 + abs(row[j]))
    for (l, p) in [(0, 3), (lm.n_layers - 1, g.T - 1), (1, 1)]:
        err = src.error.clone()
        err[l, p] = 0
        val, _ = logit_of(lin.embed, src.acts, err)
        assert abs((base - val) - row[g.error_index(l, p)]) < 1e-3 * (1 + abs(base))
    emb = lin.embed.clone()
    emb[2] = 0
    val, _ = logit_of(emb, src.acts, src.error)
    assert abs((base - val) - row[g.token_index(2)]) < 1e-3 * (1 + abs(base))
    # 4. edges into a feature: its pre-activation (minus bias) moves by the edge
    t = int(torch.argmax(g.features[:, 0]))                           # a deep feature
    l, p, i = g.features[t].tolist()
    e = tc.encoder_vectors(l)[i].detach()
    for j in (A[t].abs().argsort(descending=True)[:3]).tolist():
        if j >= nf:
            continue
        acts = src.acts.clone()
        acts[j] = 0
        _, ins = logit_of(lin.embed, acts, src.error)
        assert abs(float(e @ (lin.mlp_in[l, p] - ins[l, p])) - A[t, j]) < 1e-3 * (1 + abs(A[t, j]))
    assert abs(A[t].sum() + float(e @ _const_in(lin, tc, src)[l, p]) - g.target_values[t]) < 1e-3 * (
        1 + abs(g.target_values[t]))
    # causality: nothing flows from a later position or a later/same layer
    f = g.features
    r, c = g.edges
    both = (r < nf) & (c < nf)
    assert bool((f[c[both], 1] <= f[r[both], 1]).all()) and bool((f[c[both], 0] < f[r[both], 0]).all())


def _const_in(lin, tc, src):
    _, ins = lin.forward(torch.zeros_like(lin.embed)[None],
                         _outs(lin, src.features, torch.zeros_like(src.acts), tc,
                               torch.zeros_like(src.error)))
    return ins[0]


def test_pruning_keeps_tokens_and_logits_and_scores_are_fractions(tiny):
    lm = tiny("llama")
    tc = random_transcoders(lm)
    g = attribute(lm, tc, PROMPT, GraphConfig(batch_size=32), progress=False)
    keep = prune(g, 0.8, 0.98)
    assert bool(keep.nodes[g.token_index(0):].all())
    assert 0 < int(keep.nodes[:g.n_features].sum()) < g.n_features
    r, c = g.edges
    assert bool((keep.nodes[r[keep.edges]] & keep.nodes[c[keep.edges]]).all())
    s = g.scores()
    assert 0 <= s["replacement"] <= 1 and 0 <= s["completeness"] <= 1
    # a perfect replacement (no error nodes' edges) scores 1
    g2 = attribute(lm, tc, PROMPT, GraphConfig(batch_size=32), progress=False)
    err = (c >= g2.error_index(0, 0)) & (c < g2.token_index(0))
    g2.edges, g2.weights = g2.edges[:, ~err], g2.weights[~err]
    assert g2.scores()["replacement"] == pytest.approx(1.0)
    # a row limit keeps the rows sparse and the top edges unchanged
    g3 = attribute(lm, tc, PROMPT, GraphConfig(batch_size=32, max_row_edges=8), progress=False)
    assert g3.weights.numel() <= 8 * g3.n_nodes
    top = g.dense()[g.logit_index(0)].abs().argsort(descending=True)[:5]
    assert torch.equal(g3.dense()[g3.logit_index(0)].abs().argsort(descending=True)[:5], top)


def test_feature_budget_picks_influential_rows(tiny):
    lm = tiny("llama")
    tc = random_transcoders(lm)
    g = attribute(lm, tc, PROMPT, GraphConfig(batch_size=8, max_feature_nodes=20), progress=False)
    assert g.n_features == 20 < g.stats["active_features"]
    # each row is the same whatever batch it was computed in (batches run on a causal prefix
    # from their top layer): the budgeted graph is a sub-graph of the full one
    cfg = dict(keep_mass=1.0, max_row_edges=10 ** 6)
    sub = attribute(lm, tc, PROMPT, GraphConfig(batch_size=3, max_feature_nodes=20, **cfg),
                    progress=False)
    full = attribute(lm, tc, PROMPT, GraphConfig(batch_size=64, **cfg), progress=False)
    fi = {tuple(f): i for i, f in enumerate(full.features.tolist())}
    idx = [fi[tuple(f)] for f in sub.features.tolist()] + list(range(full.n_features,
                                                                      full.n_nodes))
    assert torch.allclose(sub.dense(), full.dense()[idx][:, idx], atol=1e-5, rtol=1e-4)


def test_bad_input_is_refused_clearly(tiny):
    lm = tiny("llama")
    with pytest.raises(BadInputError, match="GiB"):
        attribute(lm, random_transcoders(lm), PROMPT * 40, GraphConfig(max_memory_gb=0.001),
                  progress=False)
    other = random_transcoders(lm)
    other.cfg.model = "some-other-model"
    with pytest.raises(BadInputError, match="some-other-model"):
        attribute(lm, other, PROMPT, progress=False)
    nan = random_transcoders(lm)
    with torch.no_grad():
        nan.W_dec[1, 3, 0] = float("nan")
    with pytest.raises(BadInputError, match="NaN"):
        attribute(lm, nan, PROMPT, progress=False)
