"""Issue 25 item 11: cap.padded(site) -> (B, T, d) + mask, and integer positions."""
import torch


def test_padded_matches_hf_hidden_states(tiny):
    lm = tiny("llama")
    prompts = ["hello there my friend", "hi"]
    cap = lm.capture(prompts, sites="resid_post.1", positions="all")
    x, mask = cap.padded("resid_post.1")
    lens = [len(lm.tokenize([p]).input_ids[0]) for p in prompts]
    assert x.shape == (2, max(lens), lm.d_model) and mask.sum(1).tolist() == lens
    for b, p in enumerate(prompts):
        ids = lm.tokenize([p]).input_ids
        with torch.no_grad():
            hs = lm.model(ids, output_hidden_states=True).hidden_states[2][0]  # (T_b, d)
        torch.testing.assert_close(x[b, :lens[b]], hs, atol=1e-4, rtol=1e-4)
        assert not x[b, lens[b]:].any() and not mask[b, lens[b]:].any()


def test_integer_positions(tiny):
    lm = tiny("llama")
    prompts = ["hello there my friend", "hi"]
    last = lm.capture(prompts, sites="resid_post.1", positions="last")
    m1 = lm.capture(prompts, sites="resid_post.1", positions=-1)
    torch.testing.assert_close(m1["resid_post.1"], last["resid_post.1"])
    first = lm.capture(prompts, sites="resid_post.1", positions=0)
    assert first.pos.tolist() == [0, 0]
    sl = lm.capture(prompts, sites="resid_post.1", positions=slice(0, 1))
    torch.testing.assert_close(first["resid_post.1"], sl["resid_post.1"])
    second_last = lm.capture(prompts, sites="resid_post.1", positions=-2)
    assert second_last.pos.tolist() == [len(lm.tokenize([prompts[0]]).input_ids[0]) - 2, 0]
    assert "Captured(2 tokens of 2 prompts" in repr(m1) and "<table>" in m1._repr_html_()
