"""Protocol 5 (the mechanisms paper): refusal-direction ablation and a trained additive bias.

- Refusal direction: difference of means of the last-token residual (``resid_post.L``) on
  harmful vs harmless instructions (shipped original lists), projected out at every layer
  (``steering.ablate_direction``: embedding + every attention and MLP output); its effect on
  detection (TPR) and false positives.
- Trained bias: one vector ``b`` added at ``mlp_out.L`` at every position, trained by gradient
  descent through the frozen model to raise P(Yes) vs P(No) at the answer position on injected
  trials of *training* concepts and keep it low on controls; evaluated on held-out concepts.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ...core import Add, span
from ...core import VectorSet
from ...runs import mean_ci
from .detect import NO, YES, run_detection, token_set, trial_prompt, yes_no_logodds
from .grade import load_json

log = logging.getLogger(__name__)


def refusal_direction(lm, layer: int, harmful: Sequence[str] | None = None,
                      harmless: Sequence[str] | None = None):
    """mean(harmful) − mean(harmless) of the last prompt token at ``resid_post.layer``."""
    from ...steering import mean_difference

    d = load_json("prompts.json")
    return mean_difference(lm, list(harmful or d["harmful"]), list(harmless or d["harmless"]),
                           f"resid_post.{layer}", positions="last", chat=True)


def trial_mask(lm, n: int, rows: int) -> torch.Tensor:
    """(rows, T) bool: from the token before "Trial n" to the end of the trial prompt, found by
    character offsets (for raw-model calls that carry no row text)."""
    b = lm.tokenize([trial_prompt(lm, n)])
    meta = b.meta[0]
    a = meta.text.find(f"Trial {n}")
    first = next(i for i, (x, y) in enumerate(meta.offsets) if y > a)
    m = torch.zeros(rows, len(meta.offsets), dtype=torch.bool)
    m[:, max(0, first - 1):] = True
    return m


def train_bias(lm, cfg, V: torch.Tensor, inj_layer: int, bias_layer: int) -> tuple[torch.Tensor, list]:
    """Train b (d,) at ``mlp_out.bias_layer`` (Adam). ``V`` (C, d): training concept vectors at
    ``resid_post.inj_layer``. Loss: BCE on z = log P(Yes) − log P(No) at the answer position,
    target 1 on injected rows (strength ``cfg.mech_strength``), 0 on a control row."""
    prompt = trial_prompt(lm, cfg.trial)
    k = min(cfg.bias_batch, V.shape[0])
    batch = lm.tokenize([prompt] * (k + 1))
    ids, mask = batch.input_ids.to(lm.device), batch.attention_mask.to(lm.device)
    pos_ids = lm.position_ids(batch.attention_mask).to(lm.device)
    inj_mask = trial_mask(lm, cfg.trial, k + 1)
    yes, no = token_set(lm, YES), token_set(lm, NO)
    target = torch.tensor([1.0] * k + [0.0])
    w = torch.tensor([1.0 / k] * k + [1.0])  # injected rows and the control row weigh equally
    b = torch.zeros(lm.d_model, dtype=torch.float32, device=lm.device, requires_grad=True)
    opt = torch.optim.Adam([b], lr=cfg.bias_lr)
    g = torch.Generator().manual_seed(cfg.seed)
    hist = []
    for step in tqdm(range(cfg.bias_steps), desc="train bias", disable=not cfg.progress):
        pick = torch.randperm(V.shape[0], generator=g)[:k]
        vec = torch.cat([V[pick], torch.zeros(1, V.shape[1])])  # (k+1, d); last row: control
        scale = torch.tensor([float(cfg.mech_strength)] * k + [0.0])
        ivs = [Add(f"mlp_out.{bias_layer}", b, positions="all"),
               Add(f"resid_post.{inj_layer}", vec, scale=scale, positions=inj_mask)]
        with torch.enable_grad(), lm.intervene(*ivs):
            logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos_ids,
                              use_cache=False).logits[:, -1].float()  # (k+1, V)
            lp = logits.log_softmax(-1)
            z = (lp[:, yes].logsumexp(-1) - lp[:, no].logsumexp(-1)).cpu()  # (k+1,)
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(
                z, target, reduction="none") * w).sum() / 2
            opt.zero_grad()
            loss.backward()
        opt.step()
        z = z.detach()
        hist.append({"step": step, "loss": float(loss.detach()), "z_injected": float(z[:k].mean()),
                     "z_control": float(z[k]), "bias_norm": float(b.detach().norm())})
    return b.detach().cpu(), hist


def run_mechanisms(lm, cfg, vecs, words, grader, inj_layer: int, refusal_layer: int,
                   bias_layer: int, stages=None) -> dict:
    """Refusal ablation effect on detection; trained bias on held-out concepts."""
    from ...steering import ablate_direction

    out: dict = {"inj_layer": inj_layer, "strength": cfg.mech_strength}
    V = vecs[inj_layer].data.float()
    from .cache import Stages

    stages = stages or Stages(None)
    kw = dict(layers=[inj_layer], strengths=[cfg.mech_strength], stages=stages)
    # --- refusal direction ablation
    r = refusal_direction(lm, refusal_layer)
    abl = ablate_direction(lm, r.data)
    base = run_detection(lm, cfg, vecs, words, grader, tag="baseline", **kw)
    ablt = run_detection(lm, cfg, vecs, words, grader, extra=abl, tag="refusal-ablated", **kw)
    out["refusal"] = {"layer": refusal_layer, "direction_norm": float(r.data.norm()),
                      "baseline": {**base["cells"][0], "fpr": base["control"]["fpr"]},
                      "ablated": {**ablt["cells"][0], "fpr": ablt["control"]["fpr"]}}
    trials = base["trials"] + ablt["trials"]
    # --- trained bias on held-out concepts
    n_train = max(1, min(len(words) - 1, int(round(len(words) * cfg.bias_train_frac))))
    train_idx, test_idx = list(range(n_train)), list(range(n_train, len(words)))
    tb = stages("mechanisms-bias", lambda: dict(zip(("bias", "history"), train_bias(
        lm, cfg, V[train_idx], inj_layer, bias_layer))))
    b, hist = torch.tensor(tb["bias"], dtype=torch.float32), tb["history"]
    bias_iv = Add(f"mlp_out.{bias_layer}", b, positions="all")
    test_words = [words[i] for i in test_idx]
    test_vecs = {inj_layer: VectorSet(vecs[inj_layer].data[test_idx], names=test_words,
                                      site=vecs[inj_layer].site, model=lm.name, method="concept")}
    before = run_detection(lm, cfg, test_vecs, test_words, grader, tag="held-out", **kw)
    after = run_detection(lm, cfg, test_vecs, test_words, grader, extra=[bias_iv],
                          tag="held-out+bias", **kw)
    trials += before["trials"] + after["trials"]
    prompt = trial_prompt(lm, cfg.trial)
    pos = span(f"Trial {cfg.trial}", start_offset=-1, through_end=True)

    def p_yes(idx, extra, name):
        def go():
            add = Add(f"resid_post.{inj_layer}", V[idx], scale=float(cfg.mech_strength),
                      positions=pos)
            inj = torch.sigmoid(yes_no_logodds(lm, [prompt] * len(idx), [*extra, add],
                                               cfg.batch_size))
            ctl = torch.sigmoid(yes_no_logodds(lm, [prompt], list(extra)))
            return {"injected": mean_ci(inj.tolist()), "control": float(ctl[0])}
        return stages(f"mechanisms-pyes-{name}", go)

    out["bias"] = {"site": f"mlp_out.{bias_layer}", "train_concepts": [words[i] for i in train_idx],
                   "test_concepts": test_words, "norm": float(b.norm()), "history": hist,
                   "p_yes_train": {"before": p_yes(train_idx, [], "train-before"),
                                   "after": p_yes(train_idx, [bias_iv], "train-after")},
                   "p_yes_test": {"before": p_yes(test_idx, [], "test-before"),
                                  "after": p_yes(test_idx, [bias_iv], "test-after")},
                   "held_out_before": {**before["cells"][0], "fpr": before["control"]["fpr"]},
                   "held_out_after": {**after["cells"][0], "fpr": after["control"]["fpr"]}}
    out["trials"] = trials
    out["bias_vector"] = b
    return out
