"""The LoRA plant's anchor loss: KL(untouched || adapted) on the labelled anchor tokens, checked
against a manual computation with the adapter switched off and on; zero at initialisation."""
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
