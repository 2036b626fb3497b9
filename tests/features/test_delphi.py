"""delphi-style scorers offline: embedding (a bag-of-tokens embedder here, MiniLM in the audit
package), intruder, contrastive explanations, semantic search."""
import zlib

import numpy as np
import pytest
import torch

from mindscope.core import BadInputError
from mindscope.features import (analyze, contrastive_explanation, embedding_scores, explain,
                                intervention_scores, intruder_scores, search_latents)


def bag_embed(texts):
    """A deterministic stand-in embedder: hashed bag of lower-cased words, unit rows."""
    out = torch.zeros(len(texts), 64)
    for i, t in enumerate(texts):
        for w in "".join(c if c.isalnum() else " " for c in t.lower()).split():
            out[i, zlib.crc32(w.encode()) % 64] += 1
    return torch.nn.functional.normalize(out, dim=1)


@pytest.fixture(scope="module")
def fs(feat_env, tmp_path_factory):
    fs = analyze(feat_env["sae"], feat_env["store"], lm=feat_env["lm"],
                 out=tmp_path_factory.mktemp("dl") / "features", progress=False)
    explain(fs, progress=False)
    return fs


def test_scores_are_in_range_and_beat_chance_on_average(fs):
    emb = embedding_scores(fs, bag_embed)
    assert emb and all(0 <= r["auc"] <= 1 for r in emb if r["auc"] == r["auc"])
    intr = intruder_scores(fs, group=3)
    assert intr and all(0 <= r["accuracy"] <= 1 and r["chance"] == pytest.approx(1 / 3) for r in intr)
    assert np.mean([r["accuracy"] for r in intr]) > 1 / 3


def test_search_finds_the_latent_by_its_own_explanation(fs):
    ex = fs.query("select latent, explanation from explanations where len(tokens) > 0 limit 1")[0]
    hits = search_latents(fs, ex["explanation"], bag_embed, top=3)
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert ex["explanation"] in [h["explanation"] for h in hits if h["score"] > 0.999]


def test_contrastive_explanation_and_errors(fs, tmp_path):
    lat = fs.query("select latent from explanations where len(tokens) > 0 limit 1")[0]["latent"]
    c = contrastive_explanation(fs, lat, bag_embed, n_neg=5)
    assert c["latent"] == lat and c["explanation"] and len(c["near_misses"]) <= 3
    with pytest.raises(BadInputError, match="no examples"):
        contrastive_explanation(fs, 10 ** 6, bag_embed)


def test_intervention_scorer_steers_and_scores(fs, feat_env):
    lat = [r["latent"] for r in fs.query("select latent from explanations where len(tokens) > 0 limit 2")]
    rows = intervention_scores(fs, feat_env["lm"], feat_env["sae"], latents=lat, embed=bag_embed,
                               prompts=("hello there", "the garden"), max_new_tokens=4)
    assert [r["latent"] for r in rows] == lat
    for r in rows:
        assert -1 <= r["overlap_gain"] <= 1 and -2 <= r["embedding_gain"] <= 2
    # a steer of zero changes nothing: both gains are exactly 0
    z = intervention_scores(fs, feat_env["lm"], feat_env["sae"], latents=lat[:1], embed=bag_embed,
                            prompts=("hello there",), scale=0.0, max_new_tokens=4)
    assert z[0]["overlap_gain"] == 0 and abs(z[0]["embedding_gain"]) < 1e-6
