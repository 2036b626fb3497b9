"""Graph JSON in circuit-tracer / Neuronpedia's schema, graph files, interventions, and the
circuit-tracer transcoder export checked against circuit-tracer's own encode/decode formulas."""
import json

import pytest
import torch
from safetensors.torch import load_file

from mindscope.circuits import (GraphConfig, attribute, export_circuit_tracer, graph_json,
                                intervene, load_graph, prepare_ids, prune, save_graph,
                                check_interventions, pearson_ci)
from mindscope.core import BadInputError

from .conftest import random_transcoders

PROMPT = "The quick brown fox jumps over the lazy dog"


def test_graph_json_schema_and_round_trip(tiny, tmp_path):
    lm = tiny("llama")
    tc = random_transcoders(lm)
    g = attribute(lm, tc, PROMPT, GraphConfig(batch_size=32), progress=False)
    d = graph_json(g, prune(g), slug="fox")
    assert set(d) == {"metadata", "qParams", "nodes", "links"}
    assert d["metadata"]["prompt_tokens"] == g.token_strs and d["metadata"]["schema_version"] == 1
    ids = {n["node_id"] for n in d["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in d["links"])
    kinds = {n["feature_type"] for n in d["nodes"]}
    assert {"embedding", "logit", "cross layer transcoder"} <= kinds
    logit = [n for n in d["nodes"] if n["feature_type"] == "logit"]
    assert sum(n["is_target_logit"] for n in logit) == 1
    assert all(n["layer"] == str(lm.n_layers + 1) for n in logit)
    f = next(n for n in d["nodes"] if n["feature_type"] == "cross layer transcoder")
    l, feat, pos = map(int, f["node_id"].split("_"))
    assert f["feature"] == (l + feat) * (l + feat + 1) // 2 + feat and f["ctx_idx"] == pos
    for key in ("node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp",
                "influence", "activation", "token_prob", "is_target_logit"):
        assert key in f
    json.dumps(d)
    save_graph(g, tmp_path / "g")
    g2 = load_graph(tmp_path / "g")
    assert torch.equal(g2.weights, g.weights) and g2.logit_strs == g.logit_strs
    assert g2.scores() == g.scores()


def test_intervention_check_runs_and_zero_edit_is_identity(tiny):
    lm = tiny("llama")
    tc = random_transcoders(lm)
    g = attribute(lm, tc, PROMPT, GraphConfig(batch_size=32), progress=False)
    ids = prepare_ids(lm, PROMPT)
    with torch.no_grad():
        clean = lm.model(input_ids=ids[None]).logits[0, -1]
    assert torch.allclose(intervene(lm, tc, ids, {}), clean, atol=1e-4)
    res = check_interventions(lm, tc, g, ids, n=8, mode="zero")
    assert len(res["rows"]) == 8 and -1 <= res["pearson"] <= 1
    assert res["ci95"][0] <= res["pearson"] <= res["ci95"][1]
    # the rows are the largest predicted effects, and each measured change is a real edit
    preds = [abs(r["predicted"]) for r in res["rows"]]
    assert preds == sorted(preds, reverse=True) and any(r["measured"] != 0 for r in res["rows"])


def test_pearson_interval_contains_r():
    x = torch.arange(20, dtype=torch.float64)
    y = x + torch.randn(20, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    r, lo, hi = pearson_ci(x, y)
    assert lo <= r <= hi and r == pytest.approx(float(torch.corrcoef(torch.stack([x, y]))[0, 1]))


@pytest.mark.parametrize("act,skip", [("jumprelu", True), ("relu", False)])
def test_circuit_tracer_export_matches_its_formulas(tiny, tmp_path, act, skip):
    lm = tiny("llama")
    tc = random_transcoders(lm, activation=act, skip=skip)
    tc.set_scales([1.5, 0.7, 2.0, 1.1], [0.5, 1.3, 0.9, 2.2])
    export_circuit_tracer(tc, lm, tmp_path / "ct")
    export_circuit_tracer(tc, lm, tmp_path / "nn", backend="nnsight")
    assert "mlp.hook_in" in (tmp_path / "nn" / "config.yaml").read_text()
    cfg = (tmp_path / "ct" / "config.yaml").read_text()
    assert "model_kind: transcoder_set" in cfg and "ln2.hook_normalized" in cfg
    x = torch.randn(5, 64)                                            # residual before the norm
    for l in range(lm.n_layers):
        t = load_file(str(tmp_path / "ct" / f"layer_{l}.safetensors"))
        norm = lm.block(l).post_attention_layernorm
        n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)  # TL
        z = torch.nn.functional.linear(n, t["W_enc"], t["b_enc"])     # circuit-tracer encode
        a = z * (z > t["activation_function.threshold"]) if act == "jumprelu" else z.relu()
        y = a @ t["W_dec"] + t["b_dec"] + (n @ t["W_skip"].T if skip else 0)
        with torch.no_grad():
            mlp_in = norm(x)
            ours = tc.decode_layer([None] * l + [tc.encode_layer(mlp_in, l)], mlp_in, l)
        assert torch.allclose(y, ours, atol=1e-4, rtol=1e-4)
        # the nnsight layout reads mlp_in itself (the norm's output, weight included)
        t2 = load_file(str(tmp_path / "nn" / f"layer_{l}.safetensors"))
        z2 = torch.nn.functional.linear(mlp_in, t2["W_enc"], t2["b_enc"])
        a2 = z2 * (z2 > t2["activation_function.threshold"]) if act == "jumprelu" else z2.relu()
        y2 = a2 @ t2["W_dec"] + t2["b_dec"] + (mlp_in @ t2["W_skip"].T if skip else 0)
        assert torch.allclose(y2, ours, atol=1e-4, rtol=1e-4)
        assert set(t) == {"W_enc", "W_dec", "b_enc", "b_dec"} | (
            {"activation_function.threshold"} if act == "jumprelu" else set()) | (
            {"W_skip"} if skip else set())


def test_export_refuses_topk_and_our_files_have_no_bare_keys(tiny, tmp_path):
    lm = tiny("llama")
    with pytest.raises(BadInputError, match="relu and jumprelu"):
        export_circuit_tracer(random_transcoders(lm), lm, tmp_path / "x")
    tc = random_transcoders(lm, kind="clt", activation="relu")
    export_circuit_tracer(tc, lm, tmp_path / "clt")
    assert load_file(str(tmp_path / "clt" / "W_dec_1.safetensors"))["W_dec_1"].shape == (32, 3, 64)
    tc.save(tmp_path / "own")
    keys = set(load_file(str(tmp_path / "own" / "transcoders.safetensors")))
    assert not keys & {"W_enc", "W_dec", "b_enc", "b_dec"}
