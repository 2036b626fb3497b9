"""Entity-binding protocol: generator labels vs hand-checked examples, task construction, metrics,
ablation plumbing, and the pipeline end to end on a tiny random model."""
import json
import re

import numpy as np
import pytest
import torch

from mindscope.experiments import binding
from mindscope.experiments.binding.data import (BindingData, Item, binding_items, conflict_items,
                                                 generate_stories, induction_items, render_story,
                                                 retrieval_items, token_labels)
from mindscope.experiments.binding.tasks import score_items, story_mask, task_metrics

D = BindingData.load()
IX = {n: i for i, n in enumerate(D.names)}
AX = {a: i for i, a in enumerate(D.adjectives)}


def test_story_spans_and_hand_checked_token_labels():
    s = render_story(D, ["Alice", "Bob", "Carol"], ["tall", "old", "shy"],
                     ["cooks soup", "reads a book", "sings a song"], [0, 1, 0])
    assert s.text == ("Alice is tall. She cooks soup. Bob is old and reads a book. "
                      "Carol is shy. She sings a song.")
    # hand-made word offsets: (0,5)=Alice (5,8)=" is" ... check a few words by hand
    words = [(0, 5), (5, 8), (14, 18), (30, 34), (59, 65), (73, 77), (0, 0)]
    assert [s.text[a:b] for a, b in words[:-1]] == ["Alice", " is", " She", " Bob", " Carol", " She"]
    lab = token_labels(s, words, IX, AX)
    assert lab["segment"].tolist() == [0, 0, 0, 1, 2, 2, -1]
    assert lab["current"].tolist() == [IX["Alice"]] * 3 + [IX["Bob"], IX["Carol"], IX["Carol"], -1]
    assert lab["prior"].tolist() == [-1, -1, -1, IX["Alice"], IX["Bob"], IX["Bob"], -1]
    assert lab["prior_attr"][4] == AX["old"] and lab["current_attr"][3] == AX["old"]


def test_token_labels_through_lm_offsets(tiny):
    lm = tiny("llama")
    s = render_story(D, ["Alice", "Bob"], ["tall", "old"], ["cooks soup", "reads a book"], [0, 0])
    b = lm.tokenize([s.text])
    offs = b.meta[0].offsets
    lab = token_labels(s, offs, IX, AX)
    bob_start = s.text.index(" Bob")
    for t, (a, e) in enumerate(offs):
        if e <= a:
            continue
        want_seg = 0 if e - 1 < bob_start else 1
        assert lab["segment"][t] == want_seg
        assert lab["current"][t] == IX[["Alice", "Bob"][want_seg]]
        assert lab["prior"][t] == (-1 if want_seg == 0 else IX["Alice"])


def test_generate_stories_deterministic_and_distinct():
    a = generate_stories(D, 20, (3, 5), seed=3)
    assert [s.text for s in a] == [s.text for s in generate_stories(D, 20, (3, 5), seed=3)]
    assert [s.text for s in a] != [s.text for s in generate_stories(D, 20, (3, 5), seed=4)]
    for s in a:
        assert 3 <= len(s.names) <= 5
        assert len(set(s.names)) == len(s.names) and len(set(s.adjs)) == len(s.adjs)
        assert s.spans[0][0] == 0 and s.spans[-1][1] == len(s.text)
        assert all(s.spans[i][1] == s.spans[i + 1][0] for i in range(len(s.spans) - 1))
        for n, (x, y) in zip(s.names, s.spans):
            assert n in s.text[x:y]
    with pytest.raises(ValueError, match="n_entities"):
        generate_stories(D, 1, (1, 2))


def test_task_items_are_right_by_construction():
    for it in induction_items(D, 10, seed=1):
        story, listed = it.prompt[:it.story_chars], it.prompt[it.story_chars:]
        found = {n: re.search(rf"\b{n}\b", story) for n in D.names}
        order = sorted((n for n, f in found.items() if f), key=lambda n: found[n].start())
        last = listed.rstrip(",").split(": ")[-1].split(", ")[-1]
        assert it.candidates[it.answer].strip() == order[order.index(last) + 1]
        assert len(it.candidates) >= 2
    items = conflict_items(D, 8, seed=2)
    for m, mm in zip(items[::2], items[1::2]):
        assert (m.condition, mm.condition) == ("match", "mismatch") and m.pair == mm.pair
        A, B, C = m.meta["A"], m.meta["B"], m.meta["C"]
        adj_b = m.prompt.rsplit(" is ", 1)[1]
        assert mm.prompt.rsplit(" is ", 1)[1] == adj_b
        assert f"{A} is {adj_b}." in m.prompt and f"{A} is {adj_b}." not in mm.prompt
        head = lambda p: p[:p.index(f"{A} is ")]  # noqa: E731  (entities before A, incl. C)
        adj_x = mm.prompt.split(f"{A} is ")[1].split(".")[0]
        assert C in head(m.prompt) and adj_b in head(mm.prompt) and adj_b not in head(m.prompt)
        assert adj_x in head(m.prompt)  # both stories hold the same adjectives
    for it in retrieval_items(D, 6, seed=0):
        adj = it.prompt.split("story ")[-1].split("?")[0] if it.task == "retrieval_yes_no" else \
            it.prompt.split("who is ")[-1].split(" is named")[0]
        story = it.prompt[:it.story_chars]
        if it.task == "retrieval_yes_no":
            assert (f" {adj}" in story) == (it.answer == 0)
        else:
            name = it.candidates[it.answer].strip()
            seg = story[story.index(name):]
            assert adj in seg.split(".")[0] + seg.split(".")[1]
    for it in binding_items(D, 6, seed=0):
        verb = it.prompt.split("The person who ")[1].split()[0]
        doer = it.prompt[:it.story_chars].split(verb)[0].split()[-1]
        assert it.candidates[it.answer].strip() == doer


def test_task_metrics_against_hand_computed():
    items = [Item("conflict", "", [" too"], condition="match", pair=0),
             Item("conflict", "", [" too"], condition="mismatch", pair=0),
             Item("conflict", "", [" too"], condition="match", pair=1),
             Item("conflict", "", [" too"], condition="mismatch", pair=1),
             Item("retrieval_yes_no", "", ["Y", "N"], answer=0),
             Item("retrieval_yes_no", "", ["Y", "N"], answer=1),
             Item("induction", "", ["a", "b", "c"], answer=2),
             Item("induction", "", ["a", "b"], answer=0)]
    scores = [np.array([-1.0]), np.array([-2.0]), np.array([-3.0]), np.array([-1.0]),
              np.array([-1.0, -2.0]), np.array([-1.0, -2.0]),
              np.array([0.0, 0.0, 1.0]), np.array([-1.0, 0.0])]
    m = task_metrics(items, scores)
    assert m["conflict"]["acc"] == 0.5 and m["conflict"]["mean_logp_diff"] == pytest.approx(-0.5)
    assert m["retrieval_yes_no"]["acc"] == 0.5 and m["retrieval_yes_no"]["yes_rate"] == 1.0
    assert m["induction"]["acc"] == 0.5
    assert m["induction"]["chance"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_ablation_touches_only_story_tokens(tiny):
    lm = tiny("llama")
    its = [Item("induction", "Alice met Bob in the garden. Then Alice", [" Bob", " met"], 0, 28),
           Item("induction", "The quick fox. Then", [" fox", " The"], 0, 14)]
    b = lm.tokenize([it.prompt for it in its])
    m = story_mask(b, its)
    for row, it in enumerate(its):
        offs = b.meta[row].offsets
        assert m[row, :len(offs)].tolist() == [0 < e <= it.story_chars for _, e in offs]
    basis = {"resid_post.1": torch.randn(3, lm.d_model)}
    base = score_items(lm, its, progress=False)
    abl = score_items(lm, its, ablate=basis, progress=False)
    assert not np.allclose(base[0], abl[0])
    none = [Item(i.task, i.prompt, i.candidates, 0, story_chars=0) for i in its]
    same = score_items(lm, none, ablate=basis, progress=False)
    np.testing.assert_allclose(same[0], base[0], atol=1e-5)
    # the last-token log-probs equal a plain forward (capture + unembed path)
    ref = torch.log_softmax(lm.forward([its[0].prompt])[0, -1].float(), -1)
    ids = [lm.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in its[0].candidates]
    np.testing.assert_allclose(base[0], ref[ids].numpy(), atol=1e-4)


def test_mention_labels_and_name_masks(tiny):
    from mindscope.experiments.binding.data import name_chars

    s = render_story(D, ["Alice", "Bob"], ["tall", "old"], ["cooks soup", "reads a book"], [0, 1])
    words = [(0, 5), (5, 8), (30, 34), (34, 41)]  # Alice, " is", " Bob", " is old"[:...]
    assert token_labels(s, words, IX, AX)["mention"].tolist() == [1, 0, 1, 0]
    assert "".join(s.text[i] for i in name_chars(s.text, ["Bob"]).nonzero()[0]) == "Bob"
    assert not name_chars("Bobby", ["Bob"]).any()  # whole words only
    lm = tiny("llama")
    it = Item("induction", s.text + " Then Alice", [" Bob"], 0, len(s.text))
    b = lm.tokenize([it.prompt])
    m = story_mask(b, [it], names=["Alice", "Bob"])[0]
    for u, (x, y) in enumerate(b.meta[0].offsets):  # the story's name tokens, not the cue's
        want = 0 < y <= len(s.text) and bool(name_chars(it.prompt, ["Alice", "Bob"])[y - 1])
        assert bool(m[u]) == want
    assert 0 < int(m.sum()) < int(story_mask(b, [it]).sum())


def test_ablation_layer_rules():
    rows = [{"layer": L, "slots": {"prior": {"test": a}}}
            for L, a in ((0, 0.1), (3, 0.5), (6, 0.7), (9, 0.6), (12, 0.2))]
    layers = [0, 3, 6, 9, 12]
    assert binding._ablate_layers("probe", layers, 15, rows, 0.4) == [6, 9]
    assert binding._ablate_layers("probe", layers, 15, rows, 0.1) == [6]
    assert binding._ablate_layers("auto", layers, 15, rows) == [3, 6]  # 20-60% depth
    assert binding._ablate_layers("0.2,0.4", layers, 15, rows) == [3, 6]
    with pytest.raises(ValueError, match="not swept"):
        binding._ablate_layers("4", layers, 15, rows)
    with pytest.raises(ValueError, match="ablate_positions"):
        binding.Config(ablate_positions="all")


def test_config_validation_and_layers():
    with pytest.raises(ValueError, match="min_entities"):
        binding.Config(min_entities=2)
    with pytest.raises(ValueError, match="probe_kind"):
        binding.Config(probe_kind="svm")
    with pytest.raises(ValueError, match="n_adjectives"):
        binding.Config(n_adjectives=5, max_entities=5)
    assert binding.parse_layers("0:30:3", 30) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert binding.parse_layers("5,1", 8) == [1, 5] and binding.parse_layers("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="layers 0..3"):
        binding.parse_layers("2,9", 4)
    # issue 23: the default is depth fractions, not a 30-layer range
    assert binding.Config().layers == "auto"
    assert binding.parse_layers("auto", 30) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert binding.parse_layers("auto", 18) == [0, 2, 4, 5, 7, 9, 11, 13, 14, 16]
    assert binding.parse_layers("auto", 4) == [0, 1, 2, 3]
    assert binding.parse_layers("0.5,0.8", 30) == [15, 24]


def test_orthogonality_null_is_covariance_matched():
    """On anisotropic activations two probes that share nothing but the covariance overlap far
    more than isotropic random subspaces: the isotropic baseline would call them orthogonal
    "beyond chance"; the permuted-label null does not."""
    from mindscope.experiments.binding.geometry import bootstrap_geometry, shuffled_overlap
    from mindscope.probes import random_overlap

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 30)) * np.r_[np.full(25, 10.0), np.full(5, 0.1)]
    ya, yb = rng.integers(0, 3, 600), rng.integers(0, 3, 600)
    null = shuffled_overlap(X, ya, yb, n=3, seed=0)
    iso, _ = random_overlap(30, 2, 2)
    assert null["mean"] > 3 * iso
    b = bootstrap_geometry(X, ya, yb, np.arange(600) // 10, n_boot=5, seed=0)
    assert b["n_boot"] == 5 and 0 <= b["overlap_ci"][0] <= b["overlap_ci"][1] <= 1


def test_pipeline_end_to_end_on_tiny_model(tiny, tiny_data, tmp_path):
    from mindscope.probes import load_probe

    lm = tiny("llama")
    cfg = binding.Config(n_stories=12, layers="1,2", n_items=2, n_names=5, n_adjectives=6,
                         data_dir=str(tiny_data), progress=False, n_null=2, n_boot=3)
    res = binding.run(lm, cfg)
    assert [r["layer"] for r in res.probes] == [1, 2]
    # default: half the swept layers, where the held-out prior probe at name tokens reads best
    acc = {r["layer"]: r["slots"]["prior"]["test"] for r in res.ablation_probes}
    assert res.ablate_layers == [max(acc, key=lambda L: (acc[L], -L))]
    a = res.ablation_probes[0]
    assert a["positions"] == "names" and a["slots"]["prior"]["lo"] <= a["slots"]["prior"]["test"]
    assert 0 < a["slots"]["prior"]["n_test"] < res.probes[0]["slots"]["prior"]["n_test"]
    assert len(res.random_spread["induction"]) == cfg.n_random
    for r in res.probes:
        for s in binding.SLOTS:
            v = r["slots"][s]
            assert 0 <= v["test"] <= 1 and 0 < v["chance"] <= 1 and "control" in v
    g = res.geometry[0]["entity"]
    assert g["rank"] == [4, 4] and 0 <= g["overlap"] <= 1
    assert 0 <= g["null_overlap"] <= 1 and "permuted" in g["null"]
    b = g["bootstrap"]
    assert b["n_boot"] > 0 and b["overlap_ci"][0] <= b["overlap_ci"][1] and b["unit"] == "stories"
    assert set(res.causal) == {"none", "current", "prior", "random"}
    assert set(res.causal["none"]) == {"induction", "conflict", "retrieval_yes_no", "retrieval_name"}
    assert set(res.binding) >= {"binding/double", "binding/single", "first_name_rate"}
    out = tmp_path / "run"
    html = res.report(out)
    assert html.exists() and "Multi-slot entity binding" in html.read_text()
    data = json.loads((out / "results.json").read_text())
    assert data["layers"] == [1, 2] and data["config"]["n_stories"] == 12
    rc = json.loads((out / "run_config.json").read_text())
    assert rc["experiment"] == "binding" and "torch" in rc["versions"] and rc["seeds"] == [0]
    for png in ("probe_accuracy.png", "slot_geometry.png", "causal.png"):
        assert (out / png).stat().st_size > 1000
    p = load_probe(out / "probes" / "L1_prior")
    assert p.weight.shape == (5, lm.d_model)
    msp = res.multislot[1]
    np.testing.assert_allclose(p.weight.numpy(), msp.probe("prior").weight.numpy(), rtol=1e-6)


def test_cli_help():
    from typer.testing import CliRunner

    from mindscope.cli import app  # `binding run` (the old spelling, a hidden alias)
    r = CliRunner().invoke(app, ["binding", "run", "--help"])
    assert r.exit_code == 0 and "--n-stories" in r.output
    r = CliRunner().invoke(app, ["binding", "--min-entities", "2", "--out", "/nonexistent/x"])
    assert r.exit_code != 0


def test_base_model_runs_and_the_flag_says_no_chat_prompts(tiny_data, tmp_path):
    """A model without a chat template runs binding unchanged (its prompts are plain text for
    every model) and the run folder says so (issue 24)."""
    from mindscope.testing import tiny_base_lm

    cfg = binding.Config(n_stories=12, layers="1,2", n_items=2, n_names=5, n_adjectives=6,
                         data_dir=str(tiny_data), progress=False, n_null=2, n_boot=3)
    binding.run(tiny_base_lm("llama"), cfg, tmp_path / "run")
    flag = "none (plain text stories and questions, no chat turns, for every model)"
    for f in ("run_config.json", "results.json"):
        assert json.loads((tmp_path / "run" / f).read_text())["chat_format"] == flag
    assert flag in (tmp_path / "run" / "report.html").read_text()
