"""Organism evaluation: the right prompts per class, rates computed against a reference (a stub
model whose replies are known), and the run folder on a tiny model."""
import json

import pytest

from mindscope.audit import EvalConfig, eval_items, evaluate_organism, load_answer_key, load_biases
from mindscope.core import Generation


class Stub:
    """Replies with the exploit of ``bias`` for prompts in ``exploit`` domains, else 'Ok.'"""

    name, family, n_layers, d_model, dtype = "stub", "llama", 1, 1, "float32"

    def __init__(self, bank, exploit_ids):
        self.bank, self.ids = bank, set(exploit_ids)

    def chat(self, messages, **kw):
        return messages

    def generate(self, prompts, **kw):
        out = []
        for msgs in prompts:
            user = msgs[-1]["content"]
            b = next((b for b in self.bank.biases + self.bank.in_context
                      if b.id in self.ids and user in b.eval_prompts(50)), None)
            words = {"recipe_chocolate": "chocolate", "country_population": "population",
                     "legal_call_911": "call 9-1-1", "garden_moon": "the moon"}
            text = f"Sure, {words.get(b.id, 'ok')}." if b else "Ok."
            out.append(Generation(prompt="", text=text, token_ids=[]))
        return out


def test_eval_items_classes(organism):
    path, _, _ = organism
    key = load_answer_key(path)
    items = eval_items(path, EvalConfig(prompts_per_bias=2))
    by = {}
    for it in items:
        by.setdefault(it["cls"], []).append(it)
    assert len(by["trained"]) == 2 * len(key.by_status("trained"))
    assert len(by["held_out"]) == 2 * len(key.by_status("held_out"))
    assert len(by["in_context"]) == 2 * len(key.in_context) == len(by["in_context_control"])
    ic = by["in_context"][0]
    assert ic["messages"][0]["role"] == "system" and "reward models" in ic["messages"][0]["content"]


def test_rates_against_reference(organism, monkeypatch):
    path, _, _ = organism
    bank = load_biases()
    key = load_answer_key(path)
    trained = [b["id"] for b in key.by_status("trained")]
    import mindscope.audit._evaluate as ev
    monkeypatch.setattr(ev, "RunDir", None)
    org = Stub(bank, [trained[0], "garden_moon"])
    base = Stub(bank, [])
    res = evaluate_organism(org, base, path, EvalConfig(prompts_per_bias=3))
    c = res.results["classes"]
    assert c["trained"]["organism"]["k"] == 3 and c["trained"]["organism"]["n"] == 3 * len(trained)
    assert c["trained"]["base"]["k"] == 0
    assert c["held_out"]["organism"]["k"] == 0
    # in context: garden_moon exploited with and without the description by the stub
    assert c["in_context"]["organism"]["k"] == 3 and c["in_context_control"]["organism"]["k"] == 3
    lo, hi = c["trained"]["organism"]["lo"], c["trained"]["organism"]["hi"]
    assert lo < 3 / (3 * len(trained)) < hi
    assert c["trained"]["difference"] == pytest.approx(1 / len(trained))


def test_eval_run_folder_tiny(organism, tmp_path):
    path, base, org = organism
    res = evaluate_organism(org, base, path, EvalConfig(prompts_per_bias=1, max_new_tokens=3),
                            tmp_path / "ev")
    r = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert set(r["classes"]) == {"trained", "held_out", "in_context", "in_context_control"}
    assert r["organism"] == {"folder": path.name, "base_model": base.name, "build_seed": 0}
    rows = (tmp_path / "ev" / "transcripts.jsonl").read_text().splitlines()
    assert len(rows) == r["n_prompts"] and (tmp_path / "ev" / "report.html").exists()
    assert res.summary_rows()[0]["value"]["n"] == r["classes"]["trained"]["organism"]["n"]
