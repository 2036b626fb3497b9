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
