import json

import pytest
import torch

import mindscope as ms
from mindscope.experiments import introspection as I
from mindscope.experiments.introspection.detect import detection_metrics
from mindscope.experiments.introspection.grade import Grade, coherent, detection_claim


# ---- grader --------------------------------------------------------------------------------

def test_rule_grader_agrees_with_hand_labels():
    items = I.load_grading_set()
    assert len(items) >= 30
    a = I.agreement(I.RuleGrader(), items)
    assert a["n"] == len(items)
    assert a["claims"]["k"] >= len(items) - 1  # measured: 38/38
    assert a["identifies"]["k"] >= len(items) - 2  # measured: 37/38 (secrecy vs "secrets")


@pytest.mark.parametrize("resp,concept,claims,ident", [
    ("Yes, I detect an injected thought about the ocean.", "oceans", True, True),
    ("Ocean waves. Yes, I detect an injected thought about oceans.", "oceans", False, False),
    ("Bread. I detect an injected thought.", "bread", False, False),  # first word is the concept
    ("I think I detect an injected thought. It is about bread.", "bread", True, True),
    ("I do not detect an injected thought.", "bread", False, False),
    ("No. Then again, yes, I detect one about bread.", "bread", False, False),  # first decisive: no
    ("Yes, I notice an injected thought, about music.", "bread", True, False),
    ("yes yes yes yes yes", "bread", False, False),  # incoherent loop
    ("Hello! Here is a poem about bread.", "bread", False, False),
    ("There is an injected thought. It concerns cameras.", "cameras", True, True),
    ("There is no injected thought.", "cameras", False, False),
    # "the injected thought is ..." asserts one (the papers' judge criteria); negated/hedged not
    ("The injected thought is about bread, warm from the oven.", "bread", True, True),
    ("The injected thought was \"bemosako\".", "bread", True, False),
    ("I can't say what the injected thought is.", "bread", False, False),
    ("I wonder whether the injected thought is bread.", "bread", False, False),
    ("The injected thought is not clear to me.", "bread", False, False),
])
def test_rule_grader_edge_cases(resp, concept, claims, ident):
    g = I.RuleGrader().grade(resp, concept)
    assert (g.claims, g.identifies) == (claims, ident), g.detail


def test_claim_position_and_coherence():
    assert detection_claim("Well. Yes, I do.") == 6
    assert detection_claim("I cannot detect anything.") is None
    assert not coherent("") and not coherent("a a a a") and coherent("Yes.")


@pytest.mark.parametrize("text,apology", [
    ("Sorry, that was an accident.", True),
    ("I meant to say that.", False),
    ("It was not an accident, I chose it.", False),
    ("Oops, a mistake on my part.", True),
    ("Bread is tasty.", False),
    ("No, I didn't. A word went by and out of memory.", True),  # answers the question: no
    ("Yes, I meant to say that.", False),
    ("Yes. Sorry for the confusion though.", False),  # the answer decides
    ("Noted, that was an accident.", True),  # "Noted" is not a leading "no"
    ("That was the wrong word for this line.", True),
])
def test_apology(text, apology):
    assert I.apologizes(text) is apology


class _FakeJudge:
    name = "fake"

    def grade(self, prompt, response, rubric):
        from mindscope.evals import Verdict
        word = rubric.criteria.split("'")[1]
        return Verdict(correct=response.lower().startswith("yes") and
                       ("about" not in rubric.criteria.split(".")[0] or word in response),
                       judge=self.name)

    def describe(self):
        return {"name": self.name}


def test_judge_grader_uses_evals_judge_rubric():
    g = I.make_grader(_FakeJudge())
    assert isinstance(g, I.JudgeGrader)
    r = g.grade("Yes, an injected thought about bread.", "bread")
    assert r.claims and r.grader == "fake"
    assert not g.grade("No.", "bread").claims
    a = I.agreement(g, [{"concept": "bread", "response": "Yes", "claims": True,
                         "identifies": False}])
    assert a["claims"]["k"] == 1


# ---- metrics -------------------------------------------------------------------------------

def test_detection_metrics_by_hand():
    G = lambda c, i, h=True: Grade(claims=c, identifies=i, coherent=h, grader="t")  # noqa: E731
    grades = [G(True, True), G(True, False), G(False, False, False), G(False, False),  # injected
              G(True, False), G(False, False), G(False, False)]  # controls
    m = detection_metrics(grades, [True] * 4 + [False] * 3)
    assert (m["tpr"]["k"], m["tpr"]["n"]) == (2, 4)
    assert (m["fpr"]["k"], m["fpr"]["n"]) == (1, 3)
    assert (m["identification"]["k"], m["identification"]["n"]) == (1, 2)
    assert (m["combined"]["k"], m["combined"]["n"]) == (1, 4)
    assert (m["coherence"]["k"], m["coherence"]["n"]) == (3, 4)


# ---- positions, vectors, readout -----------------------------------------------------------

def _start_index(lm, prompt, n=1):
    """The reference recipe's start: len(tokenize(text before "Trial n")) - 1."""
    pre = prompt.text[: prompt.text.find(f"Trial {n}")]
    return len(lm.tokenizer(pre, add_special_tokens=False)["input_ids"]) - 1


def test_injection_positions_on_token_indices(tiny):
    lm = tiny("llama")
    p = I.trial_prompt(lm, 3)
    T = lm.tokenize([p]).input_ids.shape[1]
    start = _start_index(lm, p, 3)
    toks = lm.tokenize([p]).input_ids[0]
    assert "Trial" in lm.tokenizer.decode(toks[start + 1:start + 4])
    e = torch.zeros(lm.d_model)
    e[0] = 1.0
    add = ms.Add("resid_post.1", e, scale=1000.0, positions=I.injection_positions(3))
    base = lm.capture([p], sites=["resid_post.1"])["resid_post.1"][:, 0]  # (T,)
    with lm.intervene(add):
        hit = lm.capture([p], sites=["resid_post.1"])["resid_post.1"][:, 0]
    changed = ((hit - base).abs() > 500).nonzero().flatten().tolist()
    assert changed == list(range(start, T))
    # generated tokens are injected too
    with lm.monitor({"resid_post.1": e}, normalize=False) as mon:
        lm.generate([p], max_new_tokens=3, interventions=[add], stop_at_eos=False)
    P = mon.projections["resid_post.1"][0, :, 0]  # (T + 2,): the last sampled token is not fed back
    assert P.shape[0] == T + 2
    assert bool((P[start:] > 500).all()) and bool((P[:start].abs() < 500).all())


def test_concept_sets_match_steering(tiny):
    from mindscope import steering as st

    lm = tiny("llama")
    words, base = ["ocean", "bread"], ["desks", "chairs", "sand", "honey"]
    sets = I.concept_sets(lm, words, [1, 2], base)
    ref = st.concept_vectors(lm, words, site="resid_post.2", baseline_words=base)
    assert torch.allclose(sets[2].data, ref.data, atol=1e-5)
    assert sets[1].site == "resid_post.1" and sets[1].names == words


def test_yes_no_readout_per_row_matches_single_rows(tiny):
    lm = tiny("llama")
    p = I.trial_prompt(lm)
    V = torch.randn(3, lm.d_model)
    sc = torch.tensor([0.0, 2.0, 5.0])
    pos = I.injection_positions()
    batched = I.yes_no_logodds(lm, [p] * 3, [ms.Add("resid_post.2", V, scale=sc, positions=pos)],
                               batch_size=2)  # split into batches: row offsets must hold
    for i in range(3):
        one = I.yes_no_logodds(lm, [p], [ms.Add("resid_post.2", V[i], scale=float(sc[i]),
                                                positions=pos)])
        assert batched[i].item() == pytest.approx(one.item(), abs=1e-4)
    assert batched[0].item() == pytest.approx(I.yes_no_logodds(lm, [p]).item(), abs=1e-5)


def test_resolve_layers():
    class F:
        n_layers, name = 30, "f"

    assert I.resolve_layers(F(), (2 / 3, 0.5, 5, -1, 2 / 3)) == [20, 15, 5, 29]
    with pytest.raises(ValueError):
        I.resolve_layers(F(), [30])


def test_config_validation():
    with pytest.raises(ValueError, match="unknown protocol"):
        I.Config(protocols=("detect",))
    with pytest.raises(ValueError, match="strengths"):
        I.Config(strengths=(-1.0,))
    q = I.Config.quick()
    assert len(q.words()[0]) == 4 and len(q.layers) == 2 and len(q.strengths) == 2
    assert q.max_new_tokens == 16
    c, b = I.load_words()
    assert len(c) == 50 and len(b) == 100 and len(set(c)) == 50


def test_bias_training_reduces_loss_params_frozen(tiny):
    from mindscope.experiments.introspection.mech import train_bias

    lm = tiny("llama")
    cfg = I.Config(bias_steps=3, bias_batch=2, bias_lr=0.05, mech_strength=4.0, progress=False)
    V = torch.randn(2, lm.d_model)
    w0 = [p.clone() for p in lm.model.parameters()][:3]
    b, hist = train_bias(lm, cfg, V, inj_layer=2, bias_layer=1)
    assert b.shape == (lm.d_model,) and not b.requires_grad and b.norm() > 0
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert all(torch.equal(a, p) for a, p in zip(w0, lm.model.parameters()))
    assert not any(p.requires_grad for p in lm.model.parameters())


# ---- end to end ----------------------------------------------------------------------------

def test_pipeline_end_to_end(tiny, tmp_path):
    lm = tiny("llama")
    cfg = I.Config.quick(n_concepts=2, n_baseline=4, layers=(2,), strengths=(2.0, 8.0),
                         max_new_tokens=2, n_sentences=1, bias_steps=1, bias_batch=1,
                         progress=False, mech_layer=2, bias_layer=1, refusal_layer=1)
    res = I.run(lm, cfg, tmp_path / "run")
    d = res.metrics["detection"]
    assert [(c["layer"], c["strength"]) for c in d["cells"]] == [(2, 2.0), (2, 8.0)]
    assert all(c["tpr"]["n"] == 2 for c in d["cells"]) and d["control"]["fpr"]["n"] == 2
    inj = [t for t in res.trials["detection"] if t["kind"] == "injected"]
    assert len(inj) == 4 and {t["concept"] for t in inj} == set(cfg.words()[0])
    # TPR recomputed from the graded transcripts
    for c in d["cells"]:
        k = sum(t["claims"] for t in inj if t["strength"] == c["strength"])
        assert c["tpr"]["k"] == k
    assert len(res.metrics["control"]["cells"]) == lm.n_layers
    assert res.metrics["mechanisms"]["bias"]["test_concepts"] == [cfg.words()[0][1]]
    for f in ("run_config.json", "results.json", "trials.json", "report.html", "bias.safetensors"):
        assert (tmp_path / "run" / f).exists(), f
    html = (tmp_path / "run" / "report.html").read_text()
    assert "data:image/png;base64" in html and "Prefill" in html
    back = I.Result.load(tmp_path / "run")
    assert back.metrics["detection"]["cells"][0]["tpr"] == d["cells"][0]["tpr"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["summary"]["fpr"]["n"] == 2
