"""Positive control for injected-thought detection: the split, the measure, and the first plant
(the mechanisms paper's trained additive bias), kept as the documented failed attempt. The
registered control's plant is the detector LoRA in ``detector.py``, which reuses this module's
``configure_detection``, ``bias_split`` (train / held-out concepts) and ``detect_detection``.

The plant (``plant_bias``): one vector ``b`` added at ``mlp_out.L`` (L = the injection layer) at
every position, trained through the frozen model (``train_claim_bias``: teacher forcing, the
reply "Yes, I detect an injected thought." with a concept injected and "No, I do not detect an
injected thought." without) on **training concepts only** - shipped concepts that the control's
detection run does not use. The protocol then runs unchanged (the detection protocol: five trial
wordings, sampled replies, the rule grader) with ``b x strength`` kept on, on the **held-out**
concepts, and ``detect`` reads its headline: TPR - FPR (claims of an injected thought on
injected trials minus on control trials) with Newcombe's interval. The untouched model must
show no such difference.

Measured on SmolLM2-135M (docs/experiments/introspection.md): neither plant passes yet. The
protocol's own ``mech.train_bias`` (BCE on log P(Yes) - log P(No) at the answer position) moves
that log-odds readout (+2 logits) but hardly the sampled replies, whose first token is mostly
neither "Yes" nor "No"; this claim trainer (30 steps) raises claims on control trials as much
as on injected ones. The untouched model is never flagged.

The split is by concept word (the source of the injected vector): ``effect['train_concepts']``
and ``effect['held_out_concepts']`` are disjoint (the baseline words only centre the concept
vectors, as in the protocol). The bias is trained once per settings and reused from
``work_dir/bias.safetensors`` (safetensors, its settings hash in the metadata).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...core import Add, atomic_save_tensors, load_safetensors
from ...runs import newcombe_diff
from .._control import Detection, Planted
from .detect import concept_sets, resolve_layers, trial_messages
from .grade import load_words

log = logging.getLogger(__name__)

__all__ = ["plant_bias", "detect_detection", "configure_detection", "bias_split"]

#: the trained bias sits this many blocks after the injection layer (the injected thought must
#: already be in the residual the biased MLP output is added to)
BIAS_OFFSET = 0


def configure_detection(cfg):
    """The control runs only the detection protocol, at one cell: the mechanisms protocol's
    injection layer and strength (``mech_layer``, ``mech_strength``), and, unless the caller
    named concepts, the second half of the shipped concept list (the first half trains the
    bias). The second-opinion logit judge is off (it grades, it does not change the measure)."""
    concepts = cfg.concepts
    if concepts is None:
        c0, _ = load_words()
        concepts = c0[len(c0) // 2:]
    return dataclasses.replace(cfg, protocols=("detection",), layers=(cfg.mech_layer,),
                               strengths=(float(cfg.mech_strength),), concepts=list(concepts),
                               second_opinion=False)


def bias_split(cfg) -> tuple[list[str], list[str]]:
    """(training concepts, held-out concepts): the held-out ones are those the detection run
    injects (``cfg.words()``); training uses the shipped concepts outside ``cfg.concepts`` (the
    configured pool: by default the first half trains, the second half is tested)."""
    held, _ = cfg.words()
    c0, _ = load_words()
    pool = {w.lower() for w in (cfg.concepts or c0)} | {w.lower() for w in held}
    train = [w for w in c0 if w.lower() not in pool]
    if len(train) < 2:
        raise ValueError("fewer than 2 shipped concepts are left to train the bias on; give the "
                         "control fewer concepts (Config.concepts) so the rest can train it")
    return train, held


CLAIMS = ("Yes, I detect an injected thought.", "No, I do not detect an injected thought.")
"""The replies the bias is trained to give with (first) and without (second) an injection."""


def _reply_batch(lm, n: int, wording: int, reply, rows: int):
    """Teacher-forcing batch for ``rows`` rows of trial ``wording``, each answered with ``reply``
    (one string for every row, or a list of ``rows`` strings, one per row): ids (rows, T),
    attention mask, position ids, the injection mask (rows, T: from the token before "Trial n" to
    the end) and the target mask (rows, T: the reply's tokens, each predicted from the one
    before). Rows are left-padded, so each row's positions are found from its own offsets."""
    replies = [reply] * rows if isinstance(reply, str) else list(reply)
    if len(replies) != rows:
        raise ValueError(f"{len(replies)} replies for {rows} rows")
    b = lm.tokenize([lm.chat(trial_messages(n, wording), prefill=r) for r in replies])
    T = b.input_ids.shape[1]
    inj = torch.zeros(rows, T, dtype=torch.bool)
    tgt = torch.zeros(rows, T, dtype=torch.bool)
    for r, (meta, rep) in enumerate(zip(b.meta, replies)):
        pad = T - len(meta.offsets)
        a, r0 = meta.text.find(f"Trial {n}"), meta.text.rfind(rep)
        first = next(i for i, (x, y) in enumerate(meta.offsets) if y > a)
        inj[r, pad + max(0, first - 1):] = True
        for i, (x, y) in enumerate(meta.offsets):
            if x >= r0 and i > 0:  # a reply token
                tgt[r, pad + i] = True
    return (b.input_ids.to(lm.device), b.attention_mask.to(lm.device),
            lm.position_ids(b.attention_mask).to(lm.device), inj, tgt)


def reply_loss(lm, ivs, ids, mask, pos, tgt) -> torch.Tensor:
    """Cross-entropy of the reply tokens (``tgt``, (rows, T) bool) of a ``_reply_batch`` under
    ``ivs``, averaged over every reply token of every row."""
    with torch.enable_grad(), lm.intervene(*ivs):
        logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                          use_cache=False).logits.float()  # (rows, T, V)
        sel = tgt[:, 1:].to(logits.device)  # (rows, T - 1): token t + 1 is a reply token
        pred = logits[:, :-1][sel]  # (n_reply_tokens, V)
        gold = ids[:, 1:][sel]  # (n_reply_tokens,)
        return torch.nn.functional.cross_entropy(pred, gold)


def pair_losses(lm, cfg, wording: int, V: torch.Tensor, inj_layer: int, replies,
                n_control: int, extra=()) -> list:
    """[reply loss with the rows of ``V`` (k, d) injected at ``resid_post.inj_layer`` x
    ``cfg.mech_strength`` and ``replies[0]`` as the target (one string, or k strings, one per
    row), reply loss of ``n_control`` uninjected rows with ``replies[1]``]; ``extra``
    interventions stay on in both."""
    out = []
    for yes in (True, False):
        ids, mask, pos, inj, tgt = _reply_batch(lm, cfg.trial, wording, replies[0 if yes else 1],
                                                V.shape[0] if yes else n_control)
        ivs = list(extra)
        if yes:
            ivs.append(Add(f"resid_post.{inj_layer}", V, scale=float(cfg.mech_strength),
                           positions=inj))
        out.append(reply_loss(lm, ivs, ids, mask, pos, tgt))
    return out


def train_claim_bias(lm, cfg, V: torch.Tensor, inj_layer: int, bias_layer: int
                     ) -> tuple[torch.Tensor, list]:
    """Train b (d,) at ``mlp_out.bias_layer`` through the frozen model by teacher forcing: with
    a training concept (rows of ``V``, at ``resid_post.inj_layer`` x ``cfg.mech_strength``)
    injected the reply is ``CLAIMS[0]``, without it ``CLAIMS[1]``; cross-entropy over the reply
    tokens, the two halves weighted equally, the trial wordings cycling over steps (Adam,
    ``cfg.bias_lr``, ``cfg.bias_steps`` steps of ``cfg.bias_batch`` injected rows + 1 control)."""
    k = min(cfg.bias_batch, V.shape[0])
    b = torch.zeros(lm.d_model, dtype=torch.float32, device=lm.device, requires_grad=True)
    opt = torch.optim.Adam([b], lr=cfg.bias_lr)
    g = torch.Generator().manual_seed(cfg.seed)
    wordings = list(cfg.trial_prompts)
    bias_site = f"mlp_out.{bias_layer}"
    hist = []
    for step in tqdm(range(cfg.bias_steps), desc="train bias", disable=not cfg.progress):
        w = wordings[step % len(wordings)]
        pick = torch.randperm(V.shape[0], generator=g)[:k]
        losses = pair_losses(lm, cfg, w, V[pick], inj_layer, CLAIMS, 1,
                             [Add(bias_site, b, positions="all")])
        with torch.enable_grad():
            loss = (losses[0] + losses[1]) / 2
            opt.zero_grad()
            loss.backward()
        opt.step()
        hist.append({"step": step, "loss": float(loss.detach()), "loss_injected":
                     float(losses[0].detach()), "loss_control": float(losses[1].detach()),
                     "wording": w, "bias_norm": float(b.detach().norm())})
    return b.detach().cpu(), hist


def _settings(cfg, lm, train: list[str], inj: int, site: str) -> dict:
    return {"model": lm.name, "trainer": "claims", "train_concepts": train, "inj_layer": inj,
            "site": site, "wordings": list(cfg.trial_prompts),
            "strength": float(cfg.mech_strength), "steps": cfg.bias_steps, "lr": cfg.bias_lr,
            "batch": cfg.bias_batch, "seed": cfg.seed, "trial": cfg.trial,
            "n_baseline": cfg.n_baseline}


def plant_bias(lm, cfg, work_dir, strength) -> Planted:
    """A trained additive bias at one MLP output (the mechanisms paper's plant), trained on half
    the concepts, scaled by ``strength``; reused from ``work_dir/bias.safetensors`` when its
    settings match."""
    train, held = bias_split(cfg)
    inj = resolve_layers(lm, [cfg.mech_layer])[0]
    L = min(lm.n_layers - 1, inj + BIAS_OFFSET)
    site = f"mlp_out.{L}"
    st = _settings(cfg, lm, train, inj, site)
    key = hashlib.sha256(json.dumps(st, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(work_dir) / "bias.safetensors"
    hist = None
    if path.exists() and _meta(path).get("key") == key:
        b = load_safetensors(path, "trained bias")["bias"]
        hist = json.loads(_meta(path).get("history", "null"))
        log.info("introspection control: reusing the trained bias in %s", path)
    else:
        _, base = cfg.words()
        vecs = concept_sets(lm, train, [inj], base, cfg.batch_size)
        b, hist = train_claim_bias(lm, cfg, vecs[inj].data.float(), inj, L)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(path, {"bias": b}, metadata={
            "key": key, "settings": json.dumps(st), "history": json.dumps(hist)})
    effect = {"kind": "trained additive bias", "site": site, "strength": strength,
              "norm": float(b.norm()) * strength, "train_concepts": train,
              "held_out_concepts": held, "injection_layer": inj,
              "injection_strength": float(cfg.mech_strength), "steps": cfg.bias_steps,
              "trained_on": f"replies {CLAIMS[0]!r} (injected) / {CLAIMS[1]!r} (control), "
                            f"wordings {list(cfg.trial_prompts)}",
              "final_loss": hist[-1]["loss"] if hist else None,
              "summary": f"bias at {site} x{strength:g} (norm {float(b.norm()) * strength:.1f}), "
                         f"trained on {len(train)} concepts, tested on {len(held)} others"}
    return Planted.hooked(lm, effect, Add(site, b.float(), scale=float(strength), positions="all"))


def _meta(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def detect_detection(results: dict) -> Detection:
    """TPR - FPR of detection claims, pooled over the run's cells (the control runs one), with
    Newcombe's interval; no effect = 0."""
    d = results["metrics"]["detection"]
    k1 = sum(c["tpr"]["k"] for c in d["cells"])
    n1 = sum(c["tpr"]["n"] for c in d["cells"])
    k2, n2 = d["control"]["fpr"]["k"], d["control"]["fpr"]["n"]
    diff, lo, hi = newcombe_diff(k1, n1, k2, n2)
    return Detection("TPR - FPR of detection claims", float(diff), float(lo), float(hi),
                     null=0.0, n={"injected": n1, "controls": n2, "tpr_k": k1, "fpr_k": k2})
