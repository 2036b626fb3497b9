"""Steered vs baseline on a tiny random model through lm.generate(..., interventions=...)."""
import json

import pytest
import torch
from safetensors.torch import save_file

import mindscope as ms
from mindscope.evals import EvalConfig, LMJudge, LMResponder, compare_variants, load_items


@pytest.fixture
def lm(tiny):
    return tiny("llama")


def test_responder_matches_direct_generate(lm):
    items = load_items(limit=3).items
    v = torch.randn(lm.d_model)
    iv = ms.Add("resid_post.1", v, scale=8.0)
    from mindscope.evals import format_messages
    msgs = [format_messages(it) for it in items]
    direct = lm.generate(msgs, max_new_tokens=6, interventions=[iv], progress=False)
    base = lm.generate(msgs, max_new_tokens=6, progress=False)
    got = LMResponder(lm, [iv], max_new_tokens=6).respond(items, msgs)
    assert [r.text for r in got] == [g.text for g in direct]
    assert [r.text for r in got] != [g.text for g in base]       # the steering is really applied
    d = LMResponder(lm, [iv], max_new_tokens=6).describe()
    assert d["interventions"][0]["op"] == "Add" and d["interventions"][0]["scale"] == 8.0
    assert d["interventions"][0]["vector"]["shape"] == [lm.d_model]


def test_compare_variants_side_by_side(lm, tmp_path):
    items = load_items(limit=4)
    v = torch.randn(lm.d_model)
    res = compare_variants(lm, items, {"baseline": [], "steered": [ms.Add("resid_post.1", v, scale=6.0)],
                                       "zero": [ms.Add("resid_post.1", v, scale=0.0)]},
                           "rule", tmp_path, max_new_tokens=5, config=EvalConfig(batch_size=2),
                           progress=False)
    base = [r["response"] for r in res["baseline"].records]
    assert base == [r["response"] for r in res["zero"].records]       # scale 0 == no steering
    assert base != [r["response"] for r in res["steered"].records]
    table = (tmp_path / "comparison.md").read_text()
    assert "| baseline | 4 |" in table and "| steered | 4 |" in table
    comp = json.loads((tmp_path / "comparison.json").read_text())
    assert comp["steered"]["provenance"]["responder"]["interventions"][0]["op"] == "Add"
    assert comp["baseline"]["provenance"]["responder"]["interventions"] == []
    assert (tmp_path / "steered" / "items.jsonl").exists()


def test_lm_judge_never_crashes(lm):
    j = LMJudge(lm, max_new_tokens=8)
    v = j.grade("2+2?", "Exact Answer: 4\nConfidence: 90%", "4")
    assert v.judge == f"lm:{lm.name}"
    # a random tiny model cannot produce a verdict: recorded as malformed, not raised
    assert v.correct is None and v.error == "malformed" and j.stats["malformed"] == 1
