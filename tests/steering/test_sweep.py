"""The batched sweep against one-trial-at-a-time generation and a manual perplexity."""
import math

import torch

import mindscope as ms
import mindscope.steering as st


def test_mentions_lemma_match():
    assert st.mentions("The oceans are deep", "ocean")
    assert st.mentions("Oceanic life", "ocean")
    assert st.mentions("a mountain path", "mountains")
    assert st.mentions("Berry jam", "berries")
    assert not st.mentions("The sea is deep", "ocean")
    assert not st.mentions("an unoceanlike word", "ocean")


def test_sweep_rows_equal_single_trials(tiny, tmp_path):
    lm = tiny("llama")
    g = torch.Generator().manual_seed(0)
    vecs = {"resid_post.1": torch.randn(64, generator=g), "resid_post.2": torch.randn(64, generator=g)}
    cfg = st.SweepConfig(strengths=[0.0, 2.0, 8.0], prompts=["Tell me about music", "Alice met Bob"],
                         concept="the", max_new_tokens=5, batch_size=7)
    res = st.sweep(lm, vecs, cfg)
    n = 2 + 2 * 2 * 3 * 2  # baseline + directions x sites x strengths x prompts
    assert len(res.trials) == n
    # every trial equals a separate generate call with a single scalar Add
    for t in res.trials[::5]:
        ivs = []
        if t["direction"] != "none":
            v = vecs[t["site"]] if t["direction"] == "vector" else None
            if v is None:  # reconstruct the random direction the same way
                gg = torch.Generator().manual_seed(cfg.seed)
                rs = {s: torch.randn(64, generator=gg) for s in sorted(vecs)}
                v = rs[t["site"]] / rs[t["site"]].norm() * vecs[t["site"]].norm()
            ivs = [ms.Add(t["site"], v, scale=t["strength"])]
        ref = lm.generate([t["prompt"]], chat=True, max_new_tokens=5, interventions=ivs)[0]
        assert ref.text == t["text"], t
    # perplexity of generated tokens under the unsteered model, by hand
    t = res.trials[-1]
    ids = lm.tokenize([t["prompt"]], chat=True).input_ids[0].tolist()
    gen = lm.tokenizer(t["text"], add_special_tokens=False)["input_ids"]
    full = torch.tensor([ids + gen])
    lp = torch.log_softmax(lm.model(input_ids=full).logits[0].float(), -1)
    ref_nll = -float(sum(lp[len(ids) - 1 + k, gen[k]] for k in range(len(gen))) / len(gen))
    assert math.isclose(t["nll"], ref_nll, rel_tol=1e-3, abs_tol=1e-3)
    tab = res.table()
    assert {r["direction"] for r in tab} == {"none", "vector", "random"}
    assert all(r["n"] == 2 for r in tab)
    out = res.save(tmp_path / "sw")
    for f in ("trials.parquet", "table.parquet", "results.json", "sweep.png", "table.md"):
        assert (out / f).stat().st_size > 0
    assert "| vector | resid_post.1 | 2 |" in res.markdown()


def test_sweep_relative_and_vector_input(tiny):
    lm = tiny("llama")
    v = st.Vector(torch.randn(64), site="resid_post.2", model=lm.name)
    cfg = st.SweepConfig(strengths=[0.5], prompts=["Hi"], max_new_tokens=3, relative=True,
                         random_baseline=False)
    res = st.sweep(lm, v, cfg, score_fn=lambda s: float(len(s) > 0))
    assert len(res.trials) == 2 and all(0 <= r["score"] <= 1 for r in res.trials)
    norm = st.residual_norms(lm, "resid_post.2")["resid_post.2"]
    ref = lm.generate(["Hi"], chat=True, max_new_tokens=3,
                      interventions=[ms.Add("resid_post.2", v.data / v.data.norm() * norm, scale=0.5)])
    assert res.trials[-1]["text"] == ref[0].text
