"""Resume of introspection runs (stage cache), control counts, and the CLI options."""
import json

import pytest

import mindscope as ms
from mindscope.experiments import introspection as I
from mindscope.experiments.introspection.cache import Stages, settings_key


def _cfg(**over):
    kw = dict(protocols=("detection", "thoughts"), n_concepts=2, n_baseline=4, layers=(2,),
              strengths=(4.0,), max_new_tokens=2, n_sentences=1, progress=False, n_controls=3)
    return I.Config.quick(**{**kw, **over})


def test_stages_pass_through_and_save(tmp_path):
    calls = []
    st = Stages(tmp_path / "s")
    f = lambda: calls.append(1) or [1.5, "a"]  # noqa: E731
    assert st("x", f) == [1.5, "a"] and st("x", f) == [1.5, "a"]
    assert len(calls) == 1 and st.loaded == 1
    assert Stages(None)("x", f) == [1.5, "a"] and len(calls) == 2


def test_settings_key_changes_with_results_not_progress_or_grader(tiny):
    lm = tiny("llama")
    k = settings_key(_cfg(), lm)
    assert k == settings_key(_cfg(progress=True), lm)
    assert k == settings_key(_cfg(grader="lm", judge_model="x"), lm)  # grades: recomputed
    assert k != settings_key(_cfg(seed=1), lm) and k != settings_key(_cfg(n_controls=4), lm)


def test_rerun_resumes_without_generating(tiny, tmp_path, monkeypatch):
    lm = tiny("llama")
    out = tmp_path / "run"
    first = I.run(lm, _cfg(), out)
    n_stages = len(list((out / "stages").rglob("*.json")))
    assert n_stages >= 5  # detection: control, control readout, layer texts + readout; thoughts
    # a killed run: results gone and the last stage unfinished
    (out / "results.json").unlink()
    last = max((out / "stages").rglob("*.json"), key=lambda p: p.stat().st_mtime)
    last.unlink()
    calls = []
    real = type(lm).generate

    def counting(self, prompts, *a, **k):
        calls.append(len(prompts))
        return real(self, prompts, *a, **k)
    monkeypatch.setattr(type(lm), "generate", counting)
    second = I.run(lm, _cfg(), out)
    assert len(calls) == 1  # only the missing stage ran
    assert second.metrics["detection"] == first.metrics["detection"]
    assert second.trials == first.trials
    r = json.loads((out / "results.json").read_text())
    assert r["resumed_stages"] == n_stages - 1
    calls.clear()
    I.run(lm, _cfg(seed=5), out)  # other settings: nothing reused
    assert len(calls) >= 3


def test_n_controls_and_mentions(tiny):
    lm = tiny("llama")
    res = I.run(lm, _cfg(protocols=("detection",)))
    d = res.metrics["detection"]
    assert d["control"]["fpr"]["n"] == 3 and d["control"]["mentions"]["n"] == 3
    ctl = [t for t in res.trials["detection"] if t["kind"] == "control"]
    assert [t["concept"] for t in ctl] == [res.config.words()[0][i % 2] for i in range(3)]
    inj = [t for t in res.trials["detection"] if t["kind"] == "injected"]
    from mindscope.experiments.introspection.grade import first_mention
    k = sum(first_mention(t["response"], t["concept"]) is not None for t in inj)
    assert d["cells"][0]["mentions"]["k"] == k and d["cells"][0]["mentions"]["n"] == 2
    with pytest.raises(ValueError, match="n_controls"):
        I.Config(n_controls=0)


def test_cli_protocol_command_passes_options(tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mindscope.cli import app  # the old spelling `introspect detection` (hidden alias)

    lm = tiny("llama")
    monkeypatch.setattr(ms, "load", lambda *a, **k: lm)
    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["introspect", "detection", "--quick", "--out", str(out), "--layers", "2",
                                 "--strengths", "3", "--n-concepts", "2", "--n-baseline", "4",
                                 "--n-controls", "2", "--max-new-tokens", "2", "--seed", "7"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "run_config.json").read_text())["settings"]
    assert (s["protocols"], s["layers"], s["strengths"]) == (["detection"], [2], [3.0])
    assert (s["n_controls"], s["seed"], s["n_baseline"]) == (2, 7, 4)
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["detection"]["control"]["fpr"]["n"] == 2


def test_sentence_mask_covers_exactly_the_sentence(tiny):
    """Thoughts/prefill inject on the sentence's tokens only, in left-padded rows (a position
    mask indexes unpadded tokens): check the positions an Add actually changes."""
    import torch

    from mindscope.experiments.introspection.probes import THINK, _sentence_mask

    lm = tiny("llama")
    sents = ["The old clock stopped at noon.", "She folded the letter and put it away today."]
    prompts = [lm.chat([{"role": "user", "content": THINK.format(s=s)}]) for s in sents]
    m = _sentence_mask(lm, prompts, sents)
    e = torch.zeros(lm.d_model)
    e[0] = 1.0
    add = ms.Add("resid_post.1", e, scale=1000.0, positions=m)
    base = lm.capture(prompts, sites=["resid_post.1"])
    with lm.intervene(add):
        hit = lm.capture(prompts, sites=["resid_post.1"])
    changed = (hit["resid_post.1"][:, 0] - base["resid_post.1"][:, 0]).abs() > 500  # (N,)
    b = lm.tokenize(prompts)
    for r, s in enumerate(sents):
        ids = b.input_ids[r][b.attention_mask[r].bool()]  # unpadded row
        rows = hit.row == r
        pos = hit.pos[rows]  # unpadded positions
        sel = pos[changed[rows]]
        assert bool((sel[1:] - sel[:-1] == 1).all())  # one contiguous run
        assert lm.tokenizer.decode(ids[sel]).strip() == s


def test_control_paired_differences(tiny):
    lm = tiny("llama")
    res = I.run(lm, _cfg(protocols=("control",), n_concepts=3))
    c = res.metrics["control"]
    assert len(c["cells"]) == lm.n_layers and c["variants"][:2] == ["think", "dont"]
    for cell in c["cells"]:
        d = cell["think_minus_dont"]
        assert d["n"] == 3
        assert d["mean"] == pytest.approx(cell["think_on"]["mean"] - cell["dont_on"]["mean"],
                                          abs=1e-6)
        assert cell["think_minus_neutral"]["mean"] == pytest.approx(
            cell["think_on"]["mean"] - cell["neutral_on"]["mean"], abs=1e-6)
