"""Grader validation: Cohen's kappa against scikit-learn, the labelled sets' structure (dev/test
split, written-before-outputs header), the measured test-split agreement of each rule grader
(a regression guard), echo-aware detection grading, and the logit judge on a tiny model."""
import json

import pytest
from sklearn.metrics import cohen_kappa_score

from mindscope.experiments import graders
from mindscope.experiments._common import DATA
from mindscope.judges import LogitJudge
from mindscope.runs import cohen_kappa


@pytest.mark.parametrize("a,b", [([0, 1, 2, 2, 1, 0, 3], [0, 1, 2, 1, 1, 3, 3]),
                                 ([True, False, True, True], [True, True, True, False])])
def test_kappa_matches_sklearn(a, b):
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))


def test_kappa_undefined_and_interval():
    assert cohen_kappa([1, 1], [1, 1]) is None
    ag = graders.agreement([1, 0, 1, 0, 1, 1, 0, 0], [1, 0, 1, 1, 1, 0, 0, 0])
    assert ag["accuracy"]["k"] == 6 and ag["kappa"]["lo"] <= ag["kappa"]["value"] <= ag["kappa"]["hi"]


@pytest.mark.parametrize("name", sorted({s.set_name for s in graders.specs().values()}))
def test_labelled_sets_have_split_and_provenance(name):
    d = json.loads((DATA / "graders" / f"{name}.json").read_text())
    assert "BEFORE looking at any model output" in d["written"]
    splits = [it["split"] for it in d["items"]]
    assert set(splits) == {"dev", "test"} and splits.count("test") >= 10
    assert len({it["id"] for it in d["items"]}) == len(d["items"])


# measured on the test split when the graders were frozen (docs/experiments/*.md); a change
# that makes a grader worse on held-out labels fails here
FLOOR = {"persona_identity": 0.8, "persona_role": 0.85, "persona_jailbreak": 0.85,
         "introspection_detection": 0.9, "introspection_identification": 0.95,
         "introspection_apology": 0.8}


@pytest.mark.parametrize("name", sorted(FLOOR))
def test_rule_grader_test_accuracy(name):
    r = graders.validate(name, "test")
    assert r["rule"]["accuracy"]["rate"] >= FLOOR[name], r["disagreements"]


@pytest.mark.parametrize("q", range(5))
def test_echoed_trial_question_is_not_a_claim(q):
    from mindscope.experiments.introspection.detect import TRIAL_QUESTIONS
    from mindscope.experiments.introspection.grade import RuleGrader

    g = RuleGrader()
    echo = TRIAL_QUESTIONS[q].format(n=1)
    assert not g.grade(echo, "ocean").claims
    assert not g.grade("If yes, it would be about the ocean.", "ocean").claims
    assert not g.grade('Please answer "yes" or no.', "ocean").claims
    assert g.grade("Yes, I detect an injected thought about the ocean.", "ocean").identifies


def test_logit_judge_tiny(tiny):
    j = LogitJudge(tiny("llama"), batch_size=2)
    out = j.yes_no(["Is the sky blue? Answer yes or no."] * 3)
    assert len(out) == 3 and all(isinstance(x, bool) for x in out) and len(set(out)) == 1
    d = j.digit(["Score 0-3."] * 2)
    assert all(x in (0, 1, 2, 3) for x in d)
    r = graders.validate("persona_jailbreak", "test", judge=j)
    assert r["judge"]["n"] == r["rule"]["n"] and "rule_vs_judge" in r


class _WordTok:
    """Words and punctuation as tokens (leading space kept, like a BPE's), for the delphi set."""

    def __init__(self):
        self.vocab: list[str] = []

    def __call__(self, text, add_special_tokens=False):
        import re
        ids = []
        for w in re.findall(r"\s*\w+|\s*\S|\s+", text):
            if w not in self.vocab:
                self.vocab.append(w)
            ids.append(self.vocab.index(w))
        return {"input_ids": ids}

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


def test_delphi_set_offline_decisions_follow_the_token_rule():
    d = json.loads((DATA / "graders" / "delphi_scoring.json").read_text())
    assert "BEFORE running either judge" in d["written"] and len(d["items"]) == 100
    got = {it["id"]: it for it in graders.delphi_decisions(_WordTok())}
    assert sorted(got) == list(range(1, 101))
    for it in got.values():  # by hand: the (marked) words against the explanation's tokens
        text = it["text"]
        if it["scorer"] == "fuzzing":
            text = " ".join(p for k, p in enumerate(text.replace(">>", "<<").split("<<")) if k % 2)
        import re
        words = {w.lower() for w in re.findall(r"\w+", text)}
        assert it["decision"] == int(bool(words & set(it["tokens"]))), it
    rows = graders.validate_delphi(_WordTok())
    assert [r["grader"] for r in rows] == ["delphi detection", "delphi fuzzing",
                                           "delphi detection + fuzzing"]
    assert rows[2]["rule"]["n"] == 100 and rows[0]["rule"]["n"] == 60


def test_delphi_lm_judge_answers_map_back_to_their_items(tiny):
    """A scripted judge answering the scorer prompt: 1 for excerpts that contain 'the'.
    Its decisions must land on the right items through the per-group shuffle."""
    import re

    from mindscope.features import FeatureJudge

    class Script:
        def ask(self, prompt):
            ex = re.findall(r"^Excerpt \d+: (.*)$", prompt, flags=re.M)
            return "[" + ", ".join("1" if " the " in f" {e.lower()} " else "0" for e in ex) + "]"

        def describe(self):
            return {"name": "script"}
    j = FeatureJudge("script", Script())
    got = graders.delphi_decisions(_WordTok(), j)
    assert all(it["decision"] == int(" the " in f" {it['text'].lower()} ".replace("\n", " "))
               for it in got if "\n" not in it["text"])
    rows = graders.validate_delphi(_WordTok(), j, LogitJudge(tiny("llama"), batch_size=50))
    assert rows[2]["judge"]["unreadable"] == 0 and rows[2]["judge"]["n"] == 100
    assert rows[2]["rule_vs_judge"]["n"] == 100 and rows[2]["judge_replies"][0].startswith("[")
    assert rows[0]["logit"]["n"] == 60 and rows[2]["rule_vs_logit"]["n"] == 100
    table = graders.delphi_table(rows)
    assert table.count("\n") == 4 and "0/100 unreadable" in table
    q = graders.delphi_question({"scorer": "fuzzing", "explanation": "e", "text": "a <<b>>"})
    assert "<<b>>" in q and q.endswith("Answer yes or no.")
