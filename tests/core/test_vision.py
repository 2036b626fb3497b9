"""Vision-language models: image + text prompts through the processor, image-token positions
(ms.role("image")) for capture, steering and SAE splices; batched == one at a time."""
import numpy as np
import pytest
import torch

import mindscope as ms
from mindscope.testing import tiny_vlm


def _img(seed, h=40, w=30):
    from PIL import Image
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm("gemma3")


def test_image_prompt_matches_the_processor_and_hf(vlm):
    p = ms.ImagePrompt("What is in the picture?", [_img(0)])
    b = vlm.tokenize([p])
    ref = vlm.processor(text=["<start_of_image>\nWhat is in the picture?"], images=[[_img(0)]],
                        return_tensors="pt")
    assert torch.equal(b.input_ids[0], ref["input_ids"][0])
    with torch.no_grad():
        hf = vlm.model(**ref, output_hidden_states=True)
    cap = vlm.capture([p], ["embed", "resid_post.1", "resid_post.3"], stop_early=False)
    # embed: the residual entering block 0, image features included
    torch.testing.assert_close(cap["embed"], hf.hidden_states[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cap["resid_post.1"], hf.hidden_states[2][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cap.logits[0], hf.logits[0], atol=1e-4, rtol=1e-4)
    # another image changes the image tokens' activations
    other = vlm.capture([ms.ImagePrompt("What is in the picture?", [_img(1)])], "resid_post.3")
    img = cap.token_ids == vlm.image_token_id
    assert not torch.allclose(other["resid_post.3"][img], cap["resid_post.3"][img])


def test_image_positions_select_image_tokens_and_batch_like_single(vlm):
    prompts = [ms.ImagePrompt("Describe it.", [_img(0)]), "A text-only prompt here",
               ms.ImagePrompt("Two: <start_of_image> and <start_of_image>", [_img(2), _img(3)])]
    img = vlm.capture(prompts, "resid_post.2", positions=ms.role("image"))
    assert img.row.tolist() == [0] * 4 + [2] * 8  # 4 image tokens per image
    assert set(img.token_ids.tolist()) == {vlm.image_token_id}
    for r, p in enumerate(prompts):
        one = vlm.capture([p], "resid_post.2", positions="all")
        allb = vlm.capture(prompts, "resid_post.2", positions="all")
        torch.testing.assert_close(allb["resid_post.2"][allb.row == r], one["resid_post.2"],
                                   atol=1e-5, rtol=1e-5)


def test_steering_and_generation_on_image_tokens(vlm):
    p = ms.ImagePrompt("Describe it.", [_img(0)])
    v = torch.randn(vlm.d_model) * 5
    base = vlm.capture([p], "resid_post.3")
    with vlm.intervene(ms.Add("resid_post.1", v, positions=ms.role("image"))):
        got = vlm.capture([p], ["resid_post.1", "resid_post.3"])
    changed = (got["resid_post.3"] - base["resid_post.3"]).norm(dim=-1) > 1e-4
    img = got.token_ids == vlm.image_token_id
    first = int(img.nonzero()[0])
    assert not bool(changed[:first].any()) and bool(changed[img].all())
    torch.testing.assert_close(got["resid_post.1"][img], base_l1(vlm, p)[img] + v, atol=1e-4,
                               rtol=1e-4)
    gens = vlm.generate([p, "plain text"], max_new_tokens=3, chat=True)
    assert len(gens) == 2 and all(len(g.token_ids) <= 3 for g in gens)


def base_l1(vlm, p):
    return vlm.capture([p], "resid_post.1")["resid_post.1"]


def test_image_errors(vlm, tiny):
    with pytest.raises(ValueError, match="no processor for images"):
        tiny("llama").tokenize([ms.ImagePrompt("hi", [_img(0)])])
    with pytest.raises(ValueError, match="2 image placeholders .* for 1 images"):
        vlm.tokenize([ms.ImagePrompt("<start_of_image> <start_of_image>", [_img(0)])])
    with pytest.raises(ValueError, match="role\\('image'\\) needs a vision-language model"):
        tiny("llama").capture(["hi"], "resid_post.1", positions=ms.role("image"))


def test_hle_image_items_run_on_a_vlm(vlm, tmp_path, tiny):
    import base64
    import io
    import json

    from mindscope import evals
    buf = io.BytesIO()
    _img(5).save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "question": "What colour dominates?", "answer": "red", "image": uri},
        {"id": "b", "question": "2+2?", "answer": "4"}]))
    assert len(evals.load_items(path)) == 1  # text-only by default: the image item is skipped
    items = evals.load_items(path, images=True)
    assert [it.image is not None for it in items] == [True, False]
    res = evals.run_eval(evals.LMResponder(vlm, max_new_tokens=3), items, "rule", progress=False)
    assert len(res.records) == 2 and res.metrics["generation_errors"] == 0
    with pytest.raises(ValueError, match="not a vision-language model"):
        evals.LMResponder(tiny("llama"), max_new_tokens=2)._prompts(
            items.items, [[{"role": "user", "content": "x"}]] * 2)
