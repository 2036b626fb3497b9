"""Synthetic ground truth: the generator keeps its promises, the scores are right on oracles."""
import pytest
import torch

from mindscope.sae import SAE, SAEConfig, TensorBatches, TrainConfig, Trainer
from mindscope.sae import SynthConfig, SynthData, synth_eval, synth_scores

CFG = SynthConfig(d=16, n_features=48, l0=4, n_parents=4, children_per_parent=2, corr_groups=4,
                  seed=0)


def test_generator_rates_hierarchy_and_l0():
    data = SynthData(CFG)
    x, acts = data.sample(40_000, torch.Generator().manual_seed(3))
    on = acts > 0
    assert abs(float(on.sum(1).float().mean()) - CFG.l0) < 0.1                     # chosen L0
    freq = on.float().mean(0)
    assert torch.allclose(freq, data.p, atol=0.01)                                 # marginals
    for p in range(CFG.n_parents):                                                 # hierarchy
        for ch in data.children[p].tolist():
            assert not bool((on[:, ch] & ~on[:, p]).any())
        assert int(on[:, data.children[p]].sum(1).max()) <= 1                       # one child
    free = data.free[CFG.n_parents:]
    assert float(freq[free[0]]) > 3 * float(freq[free[-1]])                        # power law
    # correlation inside a copula group is positive, across groups ~0
    g = data.group[CFG.n_parents:]
    a, b = free[g == 0][:2]
    c = free[g == 1][0]
    cc = torch.corrcoef(on[:, [a, b, c]].float().T)
    assert cc[0, 1] > 0.02 and abs(float(cc[0, 2])) < 0.02
    assert torch.allclose(data.D.norm(dim=1), torch.ones(48))
    assert torch.allclose(x, acts @ data.D, atol=0.1)


def test_scores_of_the_oracle_and_of_an_absorbing_dictionary():
    data = SynthData(CFG)
    x, acts = data.sample(5000, torch.Generator().manual_seed(4))
    s = synth_scores(acts, data.D, data, acts)
    assert s["mcc"] == pytest.approx(1.0) and s["recovered"] == 1.0
    assert s["precision"] == pytest.approx(1.0) and s["recall"] == pytest.approx(1.0)
    assert s["shrinkage"] == pytest.approx(1.0) and s["absorption"] == 0.0 and s["dead"] == 0.0
    assert s["hedging"] < 0.2
    # absorb: the parent's latent goes silent whenever a child fires
    codes = acts.clone()
    for p in range(CFG.n_parents):
        child_on = (acts[:, data.children[p]] > 0).any(1)
        codes[child_on, p] = 0
    s = synth_scores(codes, data.D, data, acts)
    assert s["absorption"] == pytest.approx(1.0)
    assert s["recall"] < 1.0 and s["precision"] == pytest.approx(1.0)
    # shrink every code by half
    assert synth_scores(acts * 0.5, data.D, data, acts)["shrinkage"] == pytest.approx(0.5)


def test_synth_eval_of_a_trained_topk_sae_beats_a_random_one():
    data = SynthData(CFG)
    x, _ = data.sample(20_000, torch.Generator().manual_seed(1))
    [sae] = Trainer([(SAEConfig("topk", 16, 48, k=4), TrainConfig(steps=150, lr=3e-3))],
                    progress=False).fit(TensorBatches(x, 256, seed=0))
    rand = SAE(SAEConfig("topk", 16, 48, k=4))
    with torch.no_grad():
        rand.W_enc.normal_(); rand.W_dec.normal_()
    a, b = synth_eval(sae, data, n=4000), synth_eval(rand, data, n=4000)
    assert a["mcc"] > b["mcc"] + 0.2 and a["fvu"] < b["fvu"]


def test_bad_synth_configs_are_refused():
    with pytest.raises(ValueError, match="n_features"):
        SynthConfig(d=8, n_features=10, n_parents=4, children_per_parent=2)
    with pytest.raises(ValueError, match="l0"):
        SynthConfig(l0=0)
