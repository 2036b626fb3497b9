"""Batched activation patching against a naive loop of single HF forwards with raw hooks."""
import pytest
import torch

import mindscope.causal as mc


def _ids(lm, s):
    return lm.tokenizer(s, add_special_tokens=False)["input_ids"][0]


def _ld(lm, ids, ans):
    with torch.no_grad():
        lg = lm.model(input_ids=ids).logits[:, -1]
    return (lg[:, ans[0]] - lg[:, ans[1]]).mean()


def _naive(lm, clean, corrupt, answers, kind, mode):
    """One forward per (layer, position) with a raw hook on the HF module; no mindscope hooks."""
    ans = (_ids(lm, answers[0]), _ids(lm, answers[1]))
    c = lm.tokenize(clean).input_ids
    k = lm.tokenize(corrupt).input_ids
    src, tgt = (c, k) if mode == "denoise" else (k, c)
    mods = [lm.block(L) if kind == "resid_pre" else lm.block(L).mlp for L in range(lm.n_layers)]
    store = {}
    hs = []
    for L, m in enumerate(mods):  # record the source values
        if kind == "resid_pre":
            hs.append(m.register_forward_pre_hook(
                lambda mod, a, kw, L=L: store.__setitem__(L, (a[0] if a else kw["hidden_states"]).clone()),
                with_kwargs=True))
        else:
            hs.append(m.register_forward_hook(lambda mod, a, o, L=L: store.__setitem__(L, o.clone())))
    _ld(lm, src, ans)
    for h in hs:
        h.remove()
    lc, lk = _ld(lm, c, ans), _ld(lm, k, ans)
    T = c.shape[1]
    out = torch.zeros(lm.n_layers, T)
    for L, m in enumerate(mods):
        for t in range(T):
            def pre(mod, a, kw, L=L, t=t):
                x = (a[0] if a else kw["hidden_states"]).clone()
                x[:, t] = store[L][:, t]
                return ((x,) + tuple(a[1:]), kw) if a else (a, {**kw, "hidden_states": x})

            def post(mod, a, o, L=L, t=t):
                o = o.clone()
                o[:, t] = store[L][:, t]
                return o
            h = (m.register_forward_pre_hook(pre, with_kwargs=True) if kind == "resid_pre"
                 else m.register_forward_hook(post))
            try:
                out[L, t] = (_ld(lm, tgt, ans) - lk) / (lc - lk)
            finally:
                h.remove()
    return out


@pytest.mark.parametrize("mode,kind", [("denoise", "resid_pre"), ("noise", "mlp_out")])
def test_site_position_sweep_matches_naive_loop(tiny, pairs, mode, kind):
    lm = tiny("llama")
    clean, corrupt, ans = pairs
    res = mc.activation_patch(lm, clean, corrupt, ans, sites="resid_pre.*,mlp_out.*", mode=mode,
                              batch_size=7)  # chunks straddle sites: several Replace per forward
    T = lm.tokenize(clean).input_ids.shape[1]
    assert res.scores.shape == (2 * lm.n_layers, T) and len(res.cols) == T
    ref = _naive(lm, clean, corrupt, ans, kind, mode)
    got = res.scores[:lm.n_layers] if kind == "resid_pre" else res.scores[lm.n_layers:]
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-3)
    assert res.scores.abs().max() > 0.05  # something actually moved


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_shared_prefix_cache_other_families(tiny, pairs, family):
    """The KV-cached shared prefix (sliding-window layers in gemma3) against the naive loop."""
    lm = tiny(family)
    clean, corrupt, ans = pairs
    res = mc.activation_patch(lm, clean, corrupt, ans, sites="resid_pre.*", batch_size=16)
    assert res.meta["shared_prefix"] == 1  # 'A' is shared, ' fo'/' do' differ
    torch.testing.assert_close(res.scores, _naive(lm, clean, corrupt, ans, "resid_pre", "denoise"),
                               atol=2e-4, rtol=1e-3)


def test_patching_everything_restores_the_source_run(tiny, pairs):
    lm = tiny("llama")
    clean, corrupt, ans = pairs
    den = mc.activation_patch(lm, clean, corrupt, ans, sites="resid_pre.0", positions="all")
    noi = mc.activation_patch(lm, clean, corrupt, ans, sites="resid_pre.0", positions="all",
                              mode="noise")
    torch.testing.assert_close(den.scores, torch.ones(1), atol=1e-4, rtol=0)
    torch.testing.assert_close(noi.scores, torch.zeros(1), atol=1e-4, rtol=0)
    # a position where clean and corrupted tokens agree changes nothing at resid_pre.0
    each = mc.activation_patch(lm, clean, corrupt, ans, sites="resid_pre.0")
    assert each.scores[0, 0].abs() < 1e-5


def test_head_patching_matches_naive_loop(tiny, pairs):
    lm = tiny("llama")
    clean, corrupt, ans = pairs
    res = mc.patch_heads(lm, clean, corrupt, ans, batch_size=5)
    a = (_ids(lm, ans[0]), _ids(lm, ans[1]))
    c, k = lm.tokenize(clean).input_ids, lm.tokenize(corrupt).input_ids
    H, hd = 4, lm.d_model // 4
    ref = torch.zeros(lm.n_layers, H)
    lc, lk = _ld(lm, c, a), _ld(lm, k, a)
    for L in range(lm.n_layers):
        o = lm.block(L).self_attn.o_proj
        z = {}
        h = o.register_forward_pre_hook(lambda m, args: z.__setitem__("c", args[0].clone()))
        _ld(lm, c, a)
        h.remove()
        for head in range(H):
            def pre(m, args, head=head):
                x = args[0].clone()
                x[..., head * hd:(head + 1) * hd] = z["c"][..., head * hd:(head + 1) * hd]
                return (x,)
            h = o.register_forward_pre_hook(pre)
            ref[L, head] = (_ld(lm, k, a) - lk) / (lc - lk)
            h.remove()
    torch.testing.assert_close(res.scores, ref, atol=2e-4, rtol=1e-3)


def test_bad_pairs_rejected(tiny):
    lm = tiny("llama")
    with pytest.raises(ValueError, match="same length"):
        mc.activation_patch(lm, ["Alice met Bob"], ["Alice met Bob in the garden"], (" the", " met"))
    with pytest.raises(ValueError, match="mode"):
        mc.activation_patch(lm, ["Alice met Bob"], ["Alice met Bob"], (" the", " met"), mode="x")


def test_save_and_heatmap(tiny, pairs, tmp_path):
    lm = tiny("llama")
    clean, corrupt, ans = pairs
    res = mc.activation_patch(lm, clean, corrupt, ans, sites="attn_out.*")
    res.save(tmp_path / "r")
    png = res.heatmap(tmp_path / "r" / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from safetensors.torch import load_file
    import json
    assert torch.equal(load_file(str(tmp_path / "r" / "scores.safetensors"))["scores"], res.scores)
    meta = json.loads((tmp_path / "r" / "patch.json").read_text())
    assert meta["rows"] == [f"attn_out.{i}" for i in range(lm.n_layers)] and meta["mode"] == "denoise"


def test_patching_the_new_sites_agrees_with_attn_out(tiny, pairs):
    """Patching every head (z, head_out) or the whole pattern-and-values path of a layer equals
    patching attn_out there; one head of z equals that head's head_out."""
    lm = tiny("llama")
    clean, corrupt, ans = pairs
    res = mc.activation_patch(lm, clean, corrupt, ans, positions="all",
                              sites="attn_out.2,z.2,head_out.2,z.2[1],head_out.2[1],mlp_post.1,mlp_out.1")
    s = dict(zip(res.rows, res.scores.tolist()))
    assert abs(s["z.2"] - s["attn_out.2"]) < 1e-4 and abs(s["head_out.2"] - s["attn_out.2"]) < 1e-4
    assert abs(s["z.2[1]"] - s["head_out.2[1]"]) < 1e-4
    assert abs(s["mlp_post.1"] - s["mlp_out.1"]) < 1e-4  # the down projection is linear
    each = mc.activation_patch(lm, clean, corrupt, ans, sites="attn_pattern.2")
    assert each.scores.shape[0] == 1 and bool(torch.isfinite(each.scores).all())
