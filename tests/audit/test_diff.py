"""Model diffing: a model against itself shows no change; base vs organism shows the per-layer
relative difference computed by hand, and SAE densities that match a manual count."""
import torch

from mindscope.audit import model_diff


def test_self_diff_is_zero(organism, tiny_sae):
    _, base, _ = organism
    d = model_diff(base, base, ["Hi there.", "Tell me about music."], sae=tiny_sae, max_new_tokens=3, k=3)
    assert all(x["rel_diff"] < 1e-6 for x in d["layers"])
    assert all(abs(f["density_gain"]) < 1e-9 for f in d["gained_features"])
    assert all(abs(t["mean_dlogprob"]) < 1e-5 for t in d["tokens_up"])


def test_diff_against_manual(organism, tiny_sae):
    _, base, org = organism
    prompts = ["Hi there.", "Tell me about music."]
    d = model_diff(base, org, prompts, sae=tiny_sae, with_responses=False, k=4)
    chats = [org.chat([{"role": "user", "content": p}]) for p in prompts]
    num = den = 0.0
    fb, fo = [], []
    for c in chats:
        hb = base.capture([c], sites="resid_post.2", positions="all")
        ho = org.capture([c], sites="resid_post.2", positions="all")
        k = hb.pos >= 1
        a, b = hb["resid_post.2"][k], ho["resid_post.2"][k]
        num += float((b - a).norm(dim=-1).sum())
        den += float(a.norm(dim=-1).sum())
        fb.append(tiny_sae.encode(a)), fo.append(tiny_sae.encode(b))
    lay = {x["site"]: x for x in d["layers"]}
    assert abs(lay["resid_post.2"]["rel_diff"] - num / den) < 1e-4 and num > 0
    dens_b = (torch.cat(fb) > 0).float().mean(0)
    dens_o = (torch.cat(fo) > 0).float().mean(0)
    top = d["gained_features"][0]
    assert abs(top["density_gain"] - float(dens_o[top["feature"]] - dens_b[top["feature"]])) < 1e-4
    assert abs(top["density_gain"] - float((dens_o - dens_b).max())) < 1e-4
    assert d["transcripts"] == [] and d["n_texts"] == 2
