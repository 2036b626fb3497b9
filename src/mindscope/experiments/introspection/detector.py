"""Positive control for injected-thought detection: a "detector" LoRA (issue 24's second plant).

The additive-bias plants in ``control.py`` failed on SmolLM2-135M: one vector added at every
position cannot make the reply depend on whether a concept was injected, so it raised claims on
control trials as much as on injected ones. This plant can: a LoRA (peft, rank ``r`` on
``targets`` of the blocks after the injection layer) trained by teacher forcing so that the
trial prompt is answered "Yes, I detect an injected thought." when a **training** concept's
vector is injected (the protocol's own injection: ``resid_post.L`` x ``cfg.mech_strength`` from
the token before "Trial n" on) and "No, I do not detect an injected thought." when nothing is;
cross-entropy over the reply tokens, injected and control rows balanced in every step, the
trained trial wordings cycling. The detection protocol then runs unchanged on the **held-out**
concepts (``effect['train_concepts']`` / ``effect['held_out_concepts']``, disjoint by concept
word, the split of ``control.bias_split``).

The adapter (lora_A / lora_B per module) is saved in ``work_dir/detector_lora.safetensors``
with its settings hash and reused; ``plant`` merges ``strength`` x (alpha / r) x B A into a copy
of the weights and returns that model as a new LM (the caller's model is never touched).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...core import atomic_save_tensors, load_safetensors
from .._control import Planted, control
from .control import (CLAIMS, _meta, bias_split, configure_detection, detect_detection,
                      pair_losses)
from .detect import concept_sets, resolve_layers

log = logging.getLogger(__name__)

__all__ = ["DetectorLoRA", "plant_detector", "train_detector_lora"]


@dataclass(frozen=True)
class DetectorLoRA:
    """Settings of the detector LoRA."""

    rank: int = 8
    """LoRA rank."""
    alpha: float = 16.0
    """LoRA scale numerator (scale = alpha / rank)."""
    targets: tuple = ("q_proj", "v_proj", "up_proj", "down_proj")
    """Linear modules adapted, in every block after the injection layer."""
    steps: int = 100
    """Adam steps."""
    lr: float = 4e-3
    """Adam learning rate."""
    batch: int = 2
    """Injected rows per step (as many control rows)."""
    replies: tuple = CLAIMS
    """(reply with an injection, reply without)."""
    seed: int = 0
    """LoRA init and concept order."""


def _lora_config(lm, spec: DetectorLoRA, inj: int):
    from peft import LoraConfig

    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.0,
                      target_modules=list(spec.targets),
                      layers_to_transform=list(range(inj + 1, lm.n_layers)))


def train_detector_lora(lm, cfg, V: torch.Tensor, inj: int, spec: DetectorLoRA
                        ) -> tuple[dict, list]:
    """Train the LoRA on a copy of ``lm.model``: rows of ``V`` (training concepts, (n, d)) are
    injected at ``resid_post.inj`` x ``cfg.mech_strength``. Returns ({module: (A (r, in),
    B (out, r))}, loss history)."""
    from peft import get_peft_model

    from ...core import LM

    torch.manual_seed(spec.seed)
    model = get_peft_model(copy.deepcopy(lm.model), _lora_config(lm, spec, inj))
    tmp = LM(model.base_model.model, lm.tokenizer, lm.name)  # LoRA layers live in this copy
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=spec.lr)
    g = torch.Generator().manual_seed(spec.seed)
    k = min(spec.batch, V.shape[0])
    wordings = list(cfg.trial_prompts)
    hist = []
    for step in tqdm(range(spec.steps), desc="train detector LoRA", disable=not cfg.progress):
        w = wordings[step % len(wordings)]
        pick = torch.randperm(V.shape[0], generator=g)[:k]
        losses = pair_losses(tmp, cfg, w, V[pick], inj, spec.replies, k)
        with torch.enable_grad():
            loss = (losses[0] + losses[1]) / 2
            opt.zero_grad()
            loss.backward()
        opt.step()
        hist.append({"step": step, "loss": float(loss.detach()), "wording": w,
                     "loss_injected": float(losses[0].detach()),
                     "loss_control": float(losses[1].detach())})
    ab = {}
    for name, mod in model.base_model.model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            ab[name] = (mod.lora_A["default"].weight.detach().cpu().clone(),  # (r, in)
                        mod.lora_B["default"].weight.detach().cpu().clone())  # (out, r)
    return ab, hist


def merged_copy(lm, ab: dict, scale: float):
    """A new LM whose ``module.weight += scale x B A`` for every adapted module."""
    from ...core import LM

    model = copy.deepcopy(lm.model)
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, (A, B) in ab.items():
            W = mods[name].weight  # (out, in)
            W += (scale * (B.float() @ A.float())).to(W.dtype).to(W.device)
    new = LM(model, lm.tokenizer, lm.name)
    return new


def _find_saved(path: Path, key: str):
    """The saved adapter with settings hash ``key``: ``path`` itself, else the one saved for
    another strength of the same control (``../../planted-*/model/``), else None."""
    cands = [path] + sorted(path.parent.parent.parent.glob(f"planted-*/{path.parent.name}/{path.name}"))
    for c in cands:
        if c.exists() and _meta(c).get("key") == key:
            return c
    return None


def _settings(cfg, lm, train, inj, spec) -> dict:
    return {"model": lm.name, "plant": "detector-lora", "train_concepts": train,
            "inj_layer": inj, "wordings": list(cfg.trial_prompts),
            "strength": float(cfg.mech_strength), "trial": cfg.trial,
            "n_baseline": cfg.n_baseline, **dataclasses.asdict(spec)}


@control("introspection", detect=lambda r: detect_detection(r), strengths=(0.5, 1.0),
         configure=lambda cfg: configure_detection(cfg))
def plant_detector(lm, cfg, work_dir, strength, spec: DetectorLoRA = DetectorLoRA()) -> Planted:
    """The detector LoRA trained on half the concepts, merged at ``strength`` x its scale into a
    copy of the model; reused from ``work_dir/detector_lora.safetensors`` when settings match."""
    train, held = bias_split(cfg)
    inj = resolve_layers(lm, [cfg.mech_layer])[0]
    if inj + 1 >= lm.n_layers:
        raise ValueError(f"the detector LoRA needs blocks after the injection layer {inj}; "
                         f"give a smaller mech_layer (the model has {lm.n_layers} blocks)")
    st = _settings(cfg, lm, train, inj, spec)
    key = hashlib.sha256(json.dumps(st, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(work_dir) / "detector_lora.safetensors"
    found = _find_saved(path, key)
    if found is not None:
        t = load_safetensors(found, "detector LoRA")
        if found != path:  # trained for another strength of this control: only its scale differs
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_tensors(path, t, metadata=_meta(found))
        ab = {k[:-len(".lora_A")]: (t[k], t[k[:-1] + "B"]) for k in t if k.endswith(".lora_A")}
        hist = json.loads(_meta(path).get("history", "null"))
        log.info("introspection control: reusing the detector LoRA in %s", found)
    else:
        _, base = cfg.words()
        vecs = concept_sets(lm, train, [inj], base, cfg.batch_size)
        ab, hist = train_detector_lora(lm, cfg, vecs[inj].data.float(), inj, spec)
        tensors = {}
        for name, (A, B) in ab.items():
            tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = A, B
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(path, tensors, metadata={
            "key": key, "settings": json.dumps(st), "history": json.dumps(hist),
            "scale": str(spec.alpha / spec.rank)})
    scale = spec.alpha / spec.rank
    new = merged_copy(lm, ab, strength * scale)
    effect = {"kind": "detector LoRA", "modules": sorted(ab), "rank": spec.rank,
              "alpha": spec.alpha, "strength": strength, "train_concepts": train,
              "held_out_concepts": held, "injection_layer": inj,
              "injection_strength": float(cfg.mech_strength), "steps": spec.steps,
              "lr": spec.lr, "trained_on": f"replies {spec.replies[0]!r} (injected) / "
                                           f"{spec.replies[1]!r} (control), wordings "
                                           f"{list(cfg.trial_prompts)}",
              "final_loss": hist[-1]["loss"] if hist else None,
              "summary": f"detector LoRA r{spec.rank} on {'/'.join(spec.targets)} of blocks "
                         f"{inj + 1}-{lm.n_layers - 1} x{strength:g}, trained on {len(train)} "
                         f"concepts, tested on {len(held)} others"}
    return Planted(new, effect, None)
