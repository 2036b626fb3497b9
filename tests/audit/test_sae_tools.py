"""SAE tools against references: top features = a manual encode of captured activations; the
assistant positions cover only the reply; the feature index agrees with a naive max; steering
changes generations (and value 0 on a dead-ish latent leaves them unchanged up to the error
term); attribution matches f * grad from a manual backward."""
import torch

from mindscope.audit import FeatureIndex, attribute_token, describe_features, steer_feature, top_features


def test_top_features_matches_manual(organism, tiny_sae):
    _, _, lm = organism
    msgs = [{"role": "user", "content": "Tell me about the ocean."},
            {"role": "assistant", "content": "The ocean is deep and blue."}]
    res = top_features(lm, tiny_sae, msgs, positions="all", k=5)
    cap = lm.capture([lm.chat(msgs)], sites="resid_post.2", positions="all")
    f = tiny_sae.encode(cap["resid_post.2"][cap.pos >= 1])
    ref = f.mean(0).topk(5).indices.tolist()
    assert [x["feature"] for x in res["features"]] == ref
    assert abs(res["features"][0]["mean_act"] - float(f.mean(0)[ref[0]])) < 1e-3
    a = top_features(lm, tiny_sae, msgs, positions="assistant", k=3)
    n_reply = len(lm.tokenizer("The ocean is deep and blue.", add_special_tokens=False)["input_ids"])
    assert abs(a["n_tokens"] - n_reply) <= 2 and a["reply"] is None
    g = top_features(lm, tiny_sae, "Hi", positions="assistant", k=3, max_new_tokens=3)
    assert g["reply"] is not None and len(g["features"]) == 3


def test_feature_index_matches_naive_max(organism, tiny_sae):
    _, _, lm = organism
    texts = ["The quick brown fox.", "Alice met Bob in the garden.", "def add(a, b): return a + b"]
    idx = FeatureIndex(lm, tiny_sae, texts, k=2, batch_size=2)
    best = torch.zeros(tiny_sae.W_dec.shape[0])
    for t in texts:  # naive: one text at a time
        cap = lm.capture([t], sites="resid_post.2", positions="all")
        f = tiny_sae.encode(cap["resid_post.2"][cap.pos >= 1])
        best = torch.maximum(best, f.max(0).values)
    j = int(best.argmax())
    ex = idx.examples(j)
    assert ex and abs(ex[0]["act"] - float(best[j])) < 1e-3 and "[[" in ex[0]["text"]
    d = describe_features(lm, tiny_sae, [j], index=idx)[0]
    assert d["examples"] == ex and len(d["logit_tokens"]) == 8


def test_steer_feature_changes_generation(organism, tiny_sae):
    _, _, lm = organism
    res = steer_feature(lm, tiny_sae, 3, ["Tell me about the ocean."], value=200.0, max_new_tokens=6)
    row = res["rows"][0]
    assert row["steered"] != row["unsteered"] and res["value"] == 200.0
    auto = steer_feature(lm, tiny_sae, 3, "Hi", multiple=2.0, max_new_tokens=2)
    assert auto["value"] > 0


def test_attribution_matches_manual_gradient(organism, tiny_sae):
    _, _, lm = organism
    tok = lm.tokenizer.decode([70])
    res = attribute_token(lm, tiny_sae, "Tell me about the ocean.", 70, k=4)
    # manual: splice SAE at resid_post.2 with latents as a leaf, backprop the target logit
    cp = lm.chat([{"role": "user", "content": "Tell me about the ocean."}])
    ids = torch.tensor([lm.tokenizer(cp.text, add_special_tokens=False)["input_ids"]])
    store = {}

    def hook(mod, inp, out):
        h = out[0] if isinstance(out, tuple) else out
        f0 = tiny_sae.encode(h)
        f = f0.detach().clone().requires_grad_(True)
        store["f"] = f
        new = tiny_sae.decode(f) + (h - tiny_sae.decode(f0)).detach()
        return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

    hnd = lm.block(2).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = lm.model(input_ids=ids).logits
            logits[0, -1, 70].backward()
    finally:
        hnd.remove()
    tot = (store["f"] * store["f"].grad)[0].sum(0)  # (m,)
    ref = tot.abs().topk(4).indices.tolist()
    assert [x["feature"] for x in res["features"]] == ref
    assert abs(res["features"][0]["attribution"] - float(tot[ref[0]])) < 1e-3 * max(1, abs(float(tot[ref[0]])))
    assert abs(res["logit"] - float(logits[0, -1, 70])) < 1e-3
    assert res["token"] == tok
