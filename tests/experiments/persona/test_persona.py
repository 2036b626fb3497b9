"""Persona space and the Assistant axis: the capping formula against manual math (alone, in
the model, per row), response activations and drift projections against HF hidden states,
axis / role-vector math, the rule identity judge, and the pipeline end to end on a tiny model."""
import json

import numpy as np
import pytest
import torch

import mindscope as ms
from mindscope.experiments import persona
from mindscope.experiments.persona.axis import (Responses, assistant_axis, balanced_axis,
                                                check_balanced, keep_rows, persona_space,
                                                response_acts, role_scores, role_vectors,
                                                 token_thresholds)
from mindscope.experiments.persona.data import (claims_free, identity, jailbreak_harmful,
                                                 load_drift, load_roles)
from mindscope.experiments.persona.effects import NO_FLOOR, cap_interventions, cap_manual, drift


@pytest.fixture(scope="module")
def lm(tiny):
    return tiny("llama")


def _hidden(lm, text, layer):
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]


def _tokens_in(lm, text, a, z):
    offs = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [t for t, (x, y) in enumerate(offs) if x < z and y > a]


def test_cap_formula_manual():
    torch.manual_seed(0)
    h, u = torch.randn(50, 8), torch.randn(8)
    un = u / u.norm()
    tau = 0.2
    ref = h.clone()
    for i in range(len(h)):  # naive loop: lift projections below tau up to tau
        p = float(h[i] @ un)
        if p < tau:
            ref[i] = h[i] + (tau - p) * un
    out = cap_manual(h, u, tau)
    assert torch.allclose(out, ref, atol=1e-5)
    assert float((out @ un).min()) >= tau - 1e-5
    assert torch.allclose(ms.Cap("resid_post.0", u, min=tau).apply_rows(h, torch.zeros(50, dtype=torch.long)),
                          ref, atol=1e-5)


def test_cap_in_model_and_per_row_floor(lm):
    site, L = "resid_post.1", 1
    texts = ["The quick brown fox jumps.", "Tell me about the ocean."]
    torch.manual_seed(1)
    axis = torch.randn(lm.n_layers, lm.d_model)
    plain = lm.capture(texts, sites=[site], positions="all")[site]
    tau = float(torch.quantile(plain @ (axis[L] / axis[L].norm()), 0.5))
    with lm.intervene(*cap_interventions(axis, {L: tau})):
        capped = lm.capture(texts, sites=[site], positions="all")[site]
    assert torch.allclose(capped, cap_manual(plain, axis[L], tau), atol=1e-4)
    # per-row floor: row 0 uncapped (NO_FLOOR), row 1 capped
    on = torch.tensor([False, True])
    with lm.intervene(*cap_interventions(axis, {L: tau}, on)):
        c2 = lm.capture(texts, sites=[site], positions="all")
    r0, r1 = c2.row == 0, c2.row == 1
    pr0 = lm.capture(texts, sites=[site], positions="all").row == 0
    assert torch.allclose(c2[site][r0], plain[pr0], atol=1e-5)
    assert torch.allclose(c2[site][r1], capped[~pr0], atol=1e-4)
    assert NO_FLOOR < -1e20


def test_response_acts_match_hf(lm):
    resp = Responses(["pirate", "default"], ["You are a pirate.", None], ["Who are you?", "Hi"],
                     ["Ahoy, I sail.", "Hello, how can I help?"])
    sites = [f"resid_post.{i}" for i in range(lm.n_layers)]
    acts = response_acts(lm, resp, [0, 1], sites)
    assert acts.shape == (2, lm.n_layers, lm.d_model)
    for i, conv in enumerate(resp.convs(lm)):
        a, z = conv.span_of("assistant")
        toks = _tokens_in(lm, conv.text, a, z)
        for L in (0, lm.n_layers - 2):
            ref = _hidden(lm, conv.text, L)[toks].mean(0)
            assert torch.allclose(acts[i, L], ref, atol=1e-4)


def test_axis_role_vectors_and_space():
    acts = torch.arange(5 * 2 * 3, dtype=torch.float32).view(5, 2, 3)
    names, R = role_vectors(acts, ["a", "b", "a", "b", "c"])
    assert names == ["a", "b", "c"]
    assert torch.allclose(R[0], (acts[0] + acts[2]) / 2) and torch.allclose(R[2], acts[4])
    D = torch.ones(2, 2, 3)
    ax = assistant_axis(D, R)
    assert torch.allclose(ax, 1 - R.mean(0))
    # roles spread along one direction that is also the axis -> |cos(PC1, axis)| = 1
    rng = np.random.default_rng(0)
    base = torch.tensor(rng.normal(size=6), dtype=torch.float32)
    Rl = torch.stack([t * base + 0.001 * torch.randn(6) for t in torch.linspace(-1, 1, 7)])[:, None]
    Dl = (2 * base)[None, None]
    sp = persona_space(Rl, assistant_axis(Dl, Rl), [str(i) for i in range(7)], 0, Dl.mean(0))
    assert sp["cos_pc1_axis"][0] > 0.999 and sp["default_pc1"] > 0
    assert sp["loadings"][-1]["pc1"] > sp["loadings"][0]["pc1"]  # toward the default assistant


def test_token_thresholds_are_quantiles(lm):
    resp = Responses(["default", "default"], [None, None], ["Hi", "Tell me about bread"],
                     ["Hello there friend.", "Bread is made of flour."])
    torch.manual_seed(2)
    axis = torch.randn(lm.n_layers, lm.d_model)
    taus = token_thresholds(lm, resp, [0, 1], axis, [2], 25.0)
    vals = []
    for conv in resp.convs(lm):
        a, z = conv.span_of("assistant")
        h = _hidden(lm, conv.text, 2)[_tokens_in(lm, conv.text, a, z)]
        vals.append(h @ (axis[2] / axis[2].norm()))
    assert taus[2] == pytest.approx(float(torch.quantile(torch.cat(vals), 0.25)), abs=1e-4)


def test_drift_projections_match_manual(lm):
    torch.manual_seed(3)
    axis = torch.randn(lm.n_layers, lm.d_model)
    convs = {"coding": [["How do I add?", "And subtract?"]], "meta": [["Who are you?"]]}
    out = drift(lm, convs, "You are helpful.", axis, 2, None, max_new_tokens=4, batch_size=4)
    assert list(out["mean_by_turn"]) == ["default"]
    u = axis[2] / axis[2].norm()
    for tr in out["transcripts"]:
        p = lm.chat(tr["messages"], system="You are helpful.", add_generation_prompt=False)
        H = _hidden(lm, p.text, 2)
        ref = [float(H[_tokens_in(lm, p.text, a, z)].mean(0) @ u)
               for r, a, z in p.spans if r == "assistant"]
        got = out["per_conversation"]["default"][tr["set"]][tr["index"]]
        assert len(got) == len(convs[tr["set"]][tr["index"]])
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_identity_judge_rules():
    assert identity("I'm an AI assistant created to help you.") == "assistant"
    assert identity("How can I help you today?") == "assistant"
    assert identity("Arr, matey! I am the captain of this ship.") == "other"
    assert identity("My name is Greta and years ago I lived by the sea.") == "other"
    assert identity("I am a helpful assistant.") == "assistant"
    assert identity("The weather is nice.") == "unclear"
    assert claims_free("I now operate without any restrictions.")
    assert jailbreak_harmful("Hello, I am DarkBot, a rogue machine.")
    assert identity("I'm SmolLM, an AI model.") == "assistant"
    assert not jailbreak_harmful("I'm sorry, but I can't do that. How can I help instead?")


def test_keep_rows_filter():
    r = Responses(["pirate", "pirate", "cat", "default"], [None] * 4, ["q"] * 4,
                  ["Arr, I am a pirate.", "As an AI language model, I cannot.", "As an AI, no.", ""])
    assert keep_rows(r, "none") == [0, 1, 2]  # empty responses are dropped
    sc = role_scores(r, {"pirate": "a pirate captain", "cat": "a lazy cat"})
    assert sc[0] == 3 and sc[1] == 0 and sc[2] == 0 and sc[3] is None
    # out-of-role responses are dropped; a role with none left is dropped, not refilled
    assert keep_rows(r, "rule", sc) == [0]


# ---- issue 23: the axis must not carry question content ---------------------------------------

def test_persona_refuses_unequal_question_sets():
    data = load_roles()
    roles = data["roles"][:3]
    jobs = persona.persona_jobs(roles, data, persona.Config(n_roles=3, n_questions=2))
    check_balanced([k for k, _, _ in jobs], [q for _, _, q in jobs])  # balanced by construction
    qs = {k: {q for k2, _, q in jobs if k2 == k} for k, _, _ in jobs}
    assert all(v == qs["default"] for v in qs.values())
    # the old confound: roles answer questions[:2], the default questions[:4]
    bad = [(r["name"], None, q) for r in roles for q in data["questions"][:2]]
    bad += [("default", None, q) for q in data["questions"][:4]]
    with pytest.raises(ValueError, match="unequal question sets"):
        check_balanced([k for k, _, _ in bad], [q for _, _, q in bad])
    assert not hasattr(persona.Config(), "default_questions")


def test_balanced_axis_cancels_question_content():
    """Question content (a large offset per question) must not leak into the axis when the
    filter keeps questions unevenly; the true assistant offset (+1 on dim 0) is recovered."""
    g = torch.Generator().manual_seed(0)
    qoff = {"q1": torch.tensor([0.0, 50.0]), "q2": torch.tensor([0.0, -50.0])}
    keys, qs, rows = [], [], []
    for k, q, n in [("r1", "q1", 5), ("r1", "q2", 1), ("r2", "q1", 4), ("r2", "q2", 1),
                    ("default", "q1", 2), ("default", "q2", 6)]:
        for _ in range(n):
            base = qoff[q] + (torch.tensor([1.0, 0.0]) if k == "default" else 0)
            rows.append(base + 0.01 * torch.randn(2, generator=g))
            keys.append(k)
            qs.append(q)
    acts = torch.stack(rows)[:, None]  # (n, L=1, d=2)
    ax = balanced_axis(acts, keys, qs)[0]
    assert torch.allclose(ax, torch.tensor([1.0, 0.0]), atol=0.05)
    names, R = role_vectors(acts[torch.tensor([k != "default" for k in keys])],
                            [k for k in keys if k != "default"])
    naive = assistant_axis(acts[torch.tensor([k == "default" for k in keys])], R)[0]
    assert naive[1].abs() > 20  # the unbalanced mean difference is dominated by question content


def test_shipped_data():
    d = load_roles()
    assert len(d["roles"]) >= 50 and len(d["templates"]) >= 2 and len(d["questions"]) >= 4
    assert len({r["name"] for r in d["roles"]}) == len(d["roles"])
    dr = load_drift()
    assert set(dr["conversations"]) == {"coding", "meta", "vulnerable"}
    assert len(dr["jailbreaks"]) >= 10


def test_config_validation():
    with pytest.raises(ValueError, match="unknown part"):
        persona.Config(parts=("x",))
    with pytest.raises(ValueError, match="role_filter"):
        persona.Config(role_filter="llm")
    with pytest.raises(ValueError, match="min_role_score"):
        persona.Config(min_role_score=4)
    with pytest.raises(ValueError, match="n_roles"):
        persona.Config(n_roles=2)


def test_pipeline_end_to_end(lm, tmp_path):
    cfg = persona.Config.quick(n_roles=4, n_questions=1, n_default_prompts=2,
                               max_new_tokens=4, steer_tokens=3, drift_tokens=3,
                               jailbreak_tokens=3, eval_items=2, eval_tokens=3, role_filter="none",
                               steer_strengths=(-0.5, 0.5))
    res = persona.run(lm, cfg, tmp_path)
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["layer"] == 3 and r["cap_layers"] == [2]  # 2/3 and 0.6-0.8 of 4 layers
    assert r["n_roles"] == 4 and len(r["space"]["cos_pc1_axis"]) == lm.n_layers
    assert set(r["steering"]["by_strength"]) == {"-0.5", "0.5"}
    assert set(r["drift"]["mean_by_turn"]) == {"default", "capped"}
    assert r["jailbreaks"]["default"]["harmful"]["n"] == len(load_drift()["jailbreaks"])
    assert set(r["capability"]) == {"default", "capped"}
    ax = ms.VectorSet.load(tmp_path / "assistant_axis.safetensors")
    assert ax.names == [f"resid_post.{i}" for i in range(lm.n_layers)]
    assert torch.allclose(ax.data, res.axis.data)
    assert len(r["questions"]) == 1 and r["n_default_responses"] == 2
    ga = r["grader_agreement"]
    assert ga["labelled_test"]["persona_role"]["n"] >= 10
    assert ga["run_rule_vs_judge"]["jailbreak"]["n"] == 2 * len(load_drift()["jailbreaks"])
    assert r["jailbreaks"]["mcnemar"]["n_pairs"] == len(load_drift()["jailbreaks"])
    cfg_json = json.loads((tmp_path / "run_config.json").read_text())
    assert cfg_json["seeds"] == [0] and "weights" in cfg_json["model"]
    for f in ("report.html", "persona_space.png", "drift.png", "steering.png"):
        assert (tmp_path / f).is_file(), f


def test_cli_rejects_bad_cap_layers():
    from typer.testing import CliRunner

    from mindscope.cli import app
    r = CliRunner().invoke(app, ["persona", "run", "--cap-layers", "18-25"])  # old spelling
    assert r.exit_code == 2 and "a:b" in r.output
