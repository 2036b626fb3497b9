"""The binding causal test's concept erasure: the eraser hook edits exactly the chosen positions
at the chosen layer, the layer-by-layer fit leaves the training stories' class means equal at
every erased layer with all erasers on (a fit on untouched activations does not), the held-out
check reports what it should, and the probe-subspace ablation stays available."""
import numpy as np
import pytest
import torch

from mindscope.experiments import binding
from mindscope.experiments.binding.data import BindingData, Item, generate_stories
from mindscope.experiments.binding.erase import (erasure_check, fit_erasers, name_positions,
                                                  name_rows, random_erasers)
from mindscope.experiments.binding.tasks import score_items, story_mask
from mindscope.probes import fit_leace, fit_probe


def _stories(lm, data_dir, n=16):
    full = BindingData.load(str(data_dir))
    names = binding.pick_names(lm, full.names, 5)
    d = full.subset(names, full.adjectives[:6])
    stories = generate_stories(d, n, (3, 5), 0)
    return stories, {x: i for i, x in enumerate(d.names)}, {a: i for i, a in enumerate(d.adjectives)}


def test_eraser_hook_edits_only_the_masked_positions_at_its_layer(tiny):
    lm = tiny("llama")
    rng = np.random.default_rng(0)
    e = fit_leace(rng.normal(size=(200, lm.d_model)), rng.integers(0, 3, 200))
    prompts = ["Alice met Bob in the garden today", "Then Bob met Alice"]
    sites = ["resid_post.0", "resid_post.1", "resid_post.2"]
    clean = lm.capture(prompts, sites=sites, positions="all", progress=False)
    T = max(len(m.offsets) for m in lm.tokenize(prompts).meta)
    mask = torch.zeros(2, T, dtype=torch.bool)
    mask[0, 2], mask[1, 1] = True, True
    with lm.intervene(e.intervention("resid_post.1", mask)):
        got = lm.capture(prompts, sites=sites, positions="all", progress=False)
    rows, pos = clean.row, clean.pos
    at = mask[rows, pos]  # (N,) the masked tokens among the captured rows
    assert int(at.sum()) == 2
    torch.testing.assert_close(got["resid_post.0"], clean["resid_post.0"])  # upstream: untouched
    h0, h1 = clean["resid_post.1"], got["resid_post.1"]
    torch.testing.assert_close(h1[~at], h0[~at])  # other positions: untouched
    torch.testing.assert_close(h1[at], e(h0[at]), atol=1e-5, rtol=1e-5)  # masked: erased
    before = (pos < torch.tensor([2, 1])[rows])  # tokens before the edit cannot see it
    torch.testing.assert_close(got["resid_post.2"][before], clean["resid_post.2"][before])
    assert not torch.allclose(got["resid_post.2"][~before], clean["resid_post.2"][~before])


def test_scoring_with_erasers_touches_only_the_story_name_tokens(tiny):
    lm = tiny("llama")
    rng = np.random.default_rng(1)
    e = fit_leace(rng.normal(size=(200, lm.d_model)), rng.integers(0, 4, 200))
    its = [Item("induction", "Alice met Bob in the garden. Then Alice", [" Bob", " met"], 0, 28)]
    base = score_items(lm, its, progress=False)
    erased = score_items(lm, its, {"resid_post.1": e}, progress=False, names=["Alice", "Bob"])
    assert not np.allclose(base[0], erased[0])
    no_names = score_items(lm, its, {"resid_post.1": e}, progress=False, names=["Zed"])
    np.testing.assert_allclose(no_names[0], base[0], atol=1e-5)
    # erasers act where they were fitted: names with a prior entity, not the first mention
    first_only = score_items(lm, its, {"resid_post.1": e}, progress=False, names=["Alice"])
    np.testing.assert_allclose(first_only[0], base[0], atol=1e-5)
    b = lm.tokenize([its[0].prompt])
    every = story_mask(b, its, ["Alice", "Bob"])[0]
    later = story_mask(b, its, ["Alice", "Bob"], first_name=False)[0]
    bob = story_mask(b, its, ["Bob"])[0]
    assert torch.equal(later, bob) and int(every.sum()) > int(later.sum()) > 0


def test_layer_by_layer_fit_erases_the_training_stories_at_every_layer(tiny, tiny_data):
    lm = tiny("llama")
    stories, nix, aix = _stories(lm, tiny_data)
    texts, mask, per = name_positions(lm, stories, nix, aix)
    test = np.arange(len(stories)) % 4 == 0
    E = fit_erasers(lm, texts, mask, per, [1, 2], test, shrinkage=None, sequential=("prior",))
    assert set(E) == {"current", "prior", "prior@untouched"} and set(E["prior"]) == {1, 2}
    assert E["prior"][1] is E["prior@untouched"][1]  # nothing upstream of the first layer
    sites = ["resid_post.1", "resid_post.2"]

    def gap(erasers):
        on = {f"resid_post.{L}": e for L, e in erasers.items()}
        X, lab, st = name_rows(lm, texts, mask, per, sites, on)
        tr, y = ~test[st], lab["prior"][~test[st]]
        out = []
        for s in sites:
            Z = X[s][tr].astype(np.float64)
            out.append(max(np.abs(Z[y == c].mean(0) - Z.mean(0)).max() for c in np.unique(y)))
        return out

    assert max(gap(E["prior"])) < 1e-4  # exact up to float32 activations
    g = gap(E["prior@untouched"])
    assert g[0] < 1e-4 < g[1]  # fitted on untouched activations: layer 2 is left readable
    X, lab, st = name_rows(lm, texts, mask, per, sites)
    tr = ~test[st]
    probes = {L: fit_probe(X[f"resid_post.{L}"][tr], lab["prior"][tr], kind="ridge", C=0.01)
              for L in (1, 2)}
    check = erasure_check(lm, texts, mask, per, E["prior"], probes, test,
                          randoms=random_erasers(E["prior@untouched"], 2, 0, band=8))
    assert [r["layer"] for r in check] == [1, 2]
    for r in check:
        assert r["n_test"] > 0 and 0 < r["chance"] <= 1 and r["rank"] == E["prior"][r["layer"]].rank
        assert r["edit_rms"] > 0 and r["random_edit_rms"] > 0 and r["x_rms"] > 0
        assert r["probe_clean"] == pytest.approx(probes[r["layer"]].score(
            X[f"resid_post.{r['layer']}"][~tr], lab["prior"][~tr]))
    # the first layer's edit, recorded in the forward, by hand (every name token of the stories)
    h = lm.capture(texts, sites="resid_post.1", positions=mask, progress=False)["resid_post.1"]
    h = h.double()
    assert check[0]["edit_rms"] == pytest.approx(
        float((h - E["prior"][1](h)).pow(2).sum(-1).mean().sqrt()), rel=1e-4)


def test_run_reports_the_erasure_check_and_keeps_the_probe_ablation(tiny, tiny_data):
    lm = tiny("llama")
    cfg = dict(n_stories=16, layers="1,2", n_items=2, n_names=5, n_adjectives=6,
               data_dir=str(tiny_data), progress=False, n_null=2, n_boot=0, n_random=2)
    res = binding.run(lm, binding.Config(**cfg, ablate_method="leace"))
    assert binding.Config().ablate_method == "probe"  # the default (docs: why)
    assert [r["layer"] for r in res.erasure_check] == res.ablate_layers
    r = res.erasure_check[0]
    assert r["slot"] == "prior" and r["rank"] == 4 and "probe_erased" in r
    old = binding.run(lm, binding.Config(**cfg))
    assert old.erasure_check == [] and old.ablate_layers == res.ablate_layers
    for t in ("induction", "conflict"):  # only the ablations differ
        assert old.causal["none"][t] == res.causal["none"][t]
    assert old.contrasts["prior_minus_random"] != res.contrasts["prior_minus_random"]


def test_config_rules_for_erasure():
    with pytest.raises(ValueError, match="ablate_positions='names'"):
        binding.Config(ablate_positions="story", ablate_method="leace")
    binding.Config(ablate_positions="story")
    with pytest.raises(ValueError, match="erase_shrinkage"):
        binding.Config(erase_shrinkage="lots")
    with pytest.raises(ValueError, match="ablate_method"):
        binding.Config(ablate_method="inlp")
    assert binding.shrinkage("none") is None and binding.shrinkage("0.3") == 0.3
