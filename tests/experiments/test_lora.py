"""The LoRA plant: the anchor loss KL(untouched || adapted) on the labelled anchor tokens, checked
against a manual computation with the adapter switched off and on (zero at initialisation); and
training resumed from its checkpoint ends with the adapter of an uninterrupted run."""
import json

import pytest
import torch

from mindscope.audit import OrganismConfig, trainable_copy
from mindscope.experiments import _lora


def test_anchor_kl_matches_manual_and_starts_at_zero(tiny):
    lm = tiny("llama")
    model = trainable_copy(lm, OrganismConfig(lora_r=4, lora_alpha=8, seed=0))
    anchors = [([5, 6, 7, 8, 9], [-100, -100, 7, 8, 9]), ([11, 12, 13], [-100, 12, 13])]
    assert float(_lora._kl_step(model, lm.tokenizer, anchors, torch.device("cpu"))) < 1e-9
    g = torch.Generator().manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.5
    got = float(_lora._kl_step(model, lm.tokenizer, anchors, torch.device("cpu")))
    kls = []
    for ids, lab in anchors:
        x = torch.tensor([ids])
        with torch.no_grad(), model.disable_adapter():
            ref = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
        with torch.no_grad():
            new = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
        for t in range(len(ids) - 1):
            if lab[t + 1] != -100:  # position t predicts labelled token t+1
                kls.append(float((ref[t].exp() * (ref[t] - new[t])).sum()))
    assert got > 1e-4
    assert abs(got - sum(kls) / len(kls)) < 1e-4 * max(1.0, got)
    # a sharpened target (temperature 0.5): the untouched logits divided by 0.5 before softmax
    got = float(_lora._kl_step(model, lm.tokenizer, anchors, torch.device("cpu"), 0.5))
    kls = []
    for ids, lab in anchors:
        x = torch.tensor([ids])
        with torch.no_grad(), model.disable_adapter():
            ref = torch.log_softmax(model(input_ids=x).logits[0].double() / 0.5, -1)
        with torch.no_grad():
            new = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
        kls += [float((ref[t].exp() * (ref[t] - new[t])).sum())
                for t in range(len(ids) - 1) if lab[t + 1] != -100]
    assert abs(got - sum(kls) / len(kls)) < 1e-4 * max(1.0, got)


def test_a_sharpened_target_lowers_entropy_on_the_examples_only(tiny):
    """target_temperature 0.5 trains toward a sharper copy of the model on the example text,
    while the anchor keeps the other text near the untouched distribution."""
    import copy

    from mindscope.core import LM

    base = tiny("llama")
    lm = LM.from_hf(copy.deepcopy(base.model), base.tokenizer)
    with torch.no_grad():  # peaked next-token distributions (a random tiny model's are ~uniform)
        lm.model.lm_head.weight.mul_(40)
    ex = [([3 + i, 4 + i, 5 + i, 6 + i, 7 + i], [-100, 4 + i, 5 + i, 6 + i, 7 + i]) for i in range(8)]
    anchors = [([40 + i, 41 + i, 42 + i, 43 + i], [-100, 41 + i, 42 + i, 43 + i]) for i in range(8)]
    cfg = _lora.LoraPlant(r=4, alpha=8, lr=1e-2, epochs=6.0, batch_size=4, seed=0,
                          target_temperature=0.5, anchor_weight=2.0)
    model, info = _lora._train(lm, ex, cfg, anchors)

    def entropy(seqs, adapter: bool):
        x = torch.tensor([ids for ids, _ in seqs])
        with torch.no_grad():
            if adapter:
                lp = torch.log_softmax(model(input_ids=x).logits.double(), -1)
            else:
                with model.disable_adapter():
                    lp = torch.log_softmax(model(input_ids=x).logits.double(), -1)
        return float(-(lp.exp() * lp).sum(-1)[:, :-1].mean())

    drop_ex = entropy(ex, False) - entropy(ex, True)
    drop_anchor = entropy(anchors, False) - entropy(anchors, True)
    assert info["steps"] == 12 and drop_ex > 0.05 and drop_ex > 3 * abs(drop_anchor)


def test_training_resumes_from_its_checkpoint_to_the_same_adapter(tiny, tmp_path, monkeypatch):
    """Interrupted after 3 of 5 steps and called again, training ends with the adapter, losses
    and data order of an uninterrupted run; a checkpoint of other examples is ignored."""
    from peft import get_peft_model_state_dict

    lm = tiny("llama")
    ex = [([3 + i, 4 + i, 5 + i, 6 + i, 7 + i], [-100, -100, 5 + i, 6 + i, 7 + i]) for i in range(10)]
    anchors = [([20 + i, 21, 22, 23], [-100, 21, 22, 23]) for i in range(4)]
    cfg = _lora.LoraPlant(r=4, alpha=8, lr=1e-2, epochs=1.0, batch_size=2, seed=0)
    monkeypatch.setattr(_lora, "CHECKPOINT_EVERY", 2)
    full, info = _lora._train(lm, ex, cfg, anchors)
    ckpt = tmp_path / "lora.partial"
    assert _lora._train(lm, ex, cfg, anchors, ckpt, stop_after=3) == (None, None)
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 3 and len(state["losses"]) == 3
    resumed, info2 = _lora._train(lm, ex, cfg, anchors, ckpt)
    assert info2["resumed_at"] == 3 and info2["steps"] == info["steps"] == 5
    assert info2["losses"] == pytest.approx(info["losses"], rel=1e-5)
    assert info2["anchor_kl"] == pytest.approx(info["anchor_kl"], rel=1e-4, abs=1e-7)
    a, b = get_peft_model_state_dict(full), get_peft_model_state_dict(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    _, info3 = _lora._train(lm, ex[:8], cfg, anchors, ckpt)  # other examples: starts afresh
    assert info3["resumed_at"] == 0


def test_lora_model_deletes_the_spent_checkpoint(tiny, tmp_path):
    lm = tiny("llama")
    ex = [([3 + i, 4 + i, 5 + i, 6 + i], [-100, 4 + i, 5 + i, 6 + i]) for i in range(6)]
    cfg = _lora.LoraPlant(r=4, alpha=8, lr=1e-2, epochs=1.0, batch_size=2, seed=0)
    _lora._train(lm, ex, cfg, (), tmp_path / "lora.partial", stop_after=1)
    assert (tmp_path / "lora.partial" / "state.json").exists()
    _, info = _lora.lora_model(lm, ex, tmp_path / "lora", 1.0, cfg)
    assert info["resumed_at"] == 1 and info["steps"] == 3
    assert not (tmp_path / "lora.partial").exists() and (tmp_path / "lora" / "train_info.json").exists()
