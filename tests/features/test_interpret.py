"""Explainer and scorers: metrics vs sklearn, offline baseline, and an OpenAI-compatible judge
on the fake server of tests/conftest.py (429, timeouts, malformed replies are counted, never crash)."""
import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from mindscope.features import (AnalysisConfig, analyze, binary_metrics, explain, highlight,
                                make_feature_judge, parse_explanation, parse_list, roc_auc, score)


@pytest.fixture(scope="module")
def fs(feat_env, tmp_path_factory):
    return analyze(feat_env["sae"], feat_env["store"], lm=feat_env["lm"],
                   out=tmp_path_factory.mktemp("in") / "features", progress=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60) + 0.3 * y, 1)  # ties on purpose
    p = (s > 0.6).astype(int)
    m = binary_metrics(y, p, s)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["precision"] == pytest.approx(precision_score(y, p, zero_division=0))
    assert m["recall"] == pytest.approx(recall_score(y, p))
    assert m["f1"] == pytest.approx(f1_score(y, p))
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["accuracy_se"] == pytest.approx(np.sqrt(m["accuracy"] * (1 - m["accuracy"]) / 60))
    assert 0 < m["f1_se"] < 0.2 and 0 < m["auc_se"] < 0.2
    assert np.isnan(roc_auc(np.ones(4), np.arange(4)))


def test_parsers():
    assert parse_list("sure: [1, 0, 1]", 3) == [1, 0, 1]
    assert parse_list("[1,0] then [0, 1, 1]", 3) == [0, 1, 1]
    assert parse_list("[1, 2, 0]", 3) is None and parse_list("[1, 2, 0]", 3, hi=3) == [1, 2, 0]
    assert parse_list("nothing", 2) is None and parse_list(None, 2) is None
    assert parse_list("[true, false]", 2) is None
    assert parse_explanation("blah\n[EXPLANATION]: the word ocean") == "the word ocean"
    assert parse_explanation("no tag") is None
    assert highlight(["a", "b", "c", "d"], [False, True, True, False]) == "a<<bc>>d"


def test_offline_pipeline(fs):
    rows = explain(fs, progress=False)
    assert rows and all(r["judge"] == "offline" and r["explanation"] for r in rows)
    sc = score(fs, progress=False)
    assert {r["scorer"] for r in sc} == {"detection", "fuzzing", "specificity"}
    det = fs.query("select avg(accuracy) a, avg(n) n, min(judge) j from scores where scorer = 'detection'")[0]
    assert det["j"] == "offline" and 0.5 < det["a"] <= 1.0
    sp = fs.query("select mean_rating, rating_by_level from scores where scorer = 'specificity' "
                  "and mean_rating is not null limit 5")
    assert all(0 <= r["mean_rating"] <= 3 for r in sp)
    # the offline detection really is "contains an explanation token"
    e = fs.query("select latent, tokens from explanations where len(tokens) > 0 limit 1")[0]
    assert fs.feature(e["latent"])["explanation"]["tokens"] == e["tokens"]
    with pytest.raises(ValueError, match="unknown scorer"):
        score(fs, scorers=["vibes"])


def test_http_judge_handles_failures(fs, fake_openai):
    fake = fake_openai
    lat = [r["latent"] for r in fs.query("select latent from features where count > 0 "
                                         "order by latent limit 4")]

    def default(body):
        prompt = body["messages"][-1]["content"]
        if "[EXPLANATION]" in prompt:
            return ("ok", "Thinking...\n[EXPLANATION]: the letter e")
        n = prompt.count("Excerpt ")
        return ("ok", json.dumps([1] * n))

    fake.default = default
    fake.script = [("429",), ("ok", "[EXPLANATION]: the letter e"), ("raw", 200, b"not json"),
                   ("ok", "no tag here")]
    j = make_feature_judge(fake.url, model="fake", timeout=2, max_retries=1, backoff=0.01)
    rows = explain(fs, judge=j, latents=lat, workers=1, progress=False)
    by = {r["latent"]: r for r in rows}
    # 1st: 429 then retried OK; 2nd: malformed JSON body; 3rd: no [EXPLANATION] tag
    assert by[lat[0]]["explanation"] == "the letter e" and by[lat[0]]["error"] is None
    assert by[lat[1]]["explanation"] is None and by[lat[1]]["error"] == "malformed"
    assert by[lat[2]]["explanation"] is None and by[lat[2]]["error"] == "malformed"
    assert by[lat[3]]["explanation"] == "the letter e"
    assert j.stats["malformed"] >= 2 and j.judge.client.stats.rate_limited == 1
    assert rows[0]["judge"].startswith("http:fake@127.0.0.1")
    # a timeout on one batch is counted, the run goes on
    fake.script = [("sleep", 2.5, "[1]"), ("sleep", 2.5, "[1]")]
    sc = score(fs, judge=j, latents=[lat[0]], scorers=["detection"], workers=1, progress=False)
    assert sc[0]["n_failed"] > 0 and sc[0]["judge"] == j.name
    assert j.stats.get("timeout", 0) >= 1
    assert sc[0]["n"] >= 1  # the other batches were scored
    got = fs.query("select judge from scores where latent = ? and scorer = 'detection'", [lat[0]])
    assert j.name in {g["judge"] for g in got}  # kept beside any offline row, not replacing it


def test_lm_judge_and_errors(fs, feat_env):
    j = make_feature_judge("lm", lm=feat_env["lm"], max_tokens=8)
    rows = explain(fs, judge=j, latents=[0], progress=False)
    assert rows[0]["judge"].startswith("lm:") and j.stats["requests"] == 1
    with pytest.raises(ValueError, match="needs a loaded model"):
        make_feature_judge("lm")
    with pytest.raises(ValueError, match="unknown judge"):
        make_feature_judge("gpt-9")
