"""Every protocol runs on a model without a chat template (a base model): its prompts become
core's plain User/Assistant transcript, and run_config.json, results.json and report.html say
so (issue 24). Tiny settings, the same as each protocol's own end-to-end test (binding, which
uses no chat prompts, is checked in binding/test_binding.py)."""
import json

import pytest

from mindscope.core import PLAIN_TRANSCRIPT
from mindscope.testing import tiny_base_lm

@pytest.fixture(scope="module")
def base():
    return tiny_base_lm("llama")


def _flags(out, flag=PLAIN_TRANSCRIPT):
    """The flag in run_config.json, results.json and report.html; results.json as a dict."""
    rc = json.loads((out / "run_config.json").read_text())
    r = json.loads((out / "results.json").read_text())
    assert rc["chat_format"] == flag and r["chat_format"] == flag
    assert flag in (out / "report.html").read_text()
    return r


def test_introspection(base, tmp_path):
    from mindscope.experiments import introspection as I

    cfg = I.Config.quick(n_concepts=2, n_baseline=4, layers=(2,), strengths=(8.0,),
                         max_new_tokens=4, n_sentences=1, protocols=("detection", "prefill"),
                         progress=False)
    res = I.run(base, cfg, tmp_path)
    r = _flags(tmp_path)
    assert r["summary"]["chat_format"] == PLAIN_TRANSCRIPT
    t = res.trials["detection"][0]
    assert t["response"] is not None and "User:" not in t["response"]  # stopped at the turn
    assert res.metrics["detection"]["cells"][0]["tpr"]["n"] == 2


def test_onpolicy(base, tmp_path):
    from mindscope.experiments import onpolicy
    from mindscope.experiments.onpolicy.core import prompt_ids, response_ids

    tok = base.tokenizer
    assert prompt_ids(base, "Why?") == tok(f"{tok.bos_token}User: Why?\nAssistant:",
                                           add_special_tokens=False)["input_ids"]
    assert response_ids(base, "Because.", 9) == tok(" Because.", add_special_tokens=False)["input_ids"]
    cfg = onpolicy.Config(n_prompts=4, max_new_tokens=8, n_boot=50, n_steer=2,
                          steer_doses=(-2.0, 0.0, 2.0), intent_prompts=3, intent_samples=3,
                          intent_tokens=6, n_topics=2, opening_tokens=3, continuation_tokens=3,
                          batch_size=8, protocols=("gap", "verbal"))
    onpolicy.run(base, cfg, tmp_path)
    r = _flags(tmp_path)
    assert set(r["gap"]["ratios"]) >= {"human", "shuffled"}
    assert "note" not in r["verbal"] and r["verbal"]["by_condition"]["human"]["n"] >= 2


def test_emotions(base, tmp_path):
    from mindscope.experiments import emotions

    cfg = emotions.Config.quick(emotions=("happy", "sad", "afraid", "calm"), n_activities=3,
                                n_pairs=1, steer_emotions=("happy",), batch_size=32)
    emotions.run(base, cfg, tmp_path)
    r = _flags(tmp_path)
    assert r["n_emotions"] == 4 and r["preferences"]["steering"]["happy"]["n"] == 4


def test_persona(base, tmp_path):
    from mindscope.experiments import persona

    cfg = persona.Config.quick(n_roles=4, n_questions=1, n_default_prompts=2, max_new_tokens=4,
                               steer_tokens=3, drift_tokens=3, jailbreak_tokens=3, eval_items=2,
                               eval_tokens=3, role_filter="none", steer_strengths=(0.5,))
    persona.run(base, cfg, tmp_path)
    r = _flags(tmp_path)
    assert r["n_roles"] == 4 and set(r["drift"]["mean_by_turn"]) == {"default", "capped"}
