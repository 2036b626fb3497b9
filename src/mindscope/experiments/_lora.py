"""A LoRA plant for positive controls: train one adapter (peft, every linear layer) on labelled
token sequences, save it as safetensors, and hand back the model with the adapter merged at a
chosen scale (the control's *strength*: 0.5 = half the trained weight change).

Training runs once per adapter folder; later calls (another strength, a resumed control) load
the saved adapter. The caller's model is never touched. Training itself resumes: every
``CHECKPOINT_EVERY`` steps the adapter, the optimizer state and the data order are saved in
``<adapter>.partial/`` (safetensors + JSON), so a run killed mid-training (a time limit) goes on
from the last checkpoint when called again with the same examples and settings, and ends with
the same adapter as an uninterrupted run.

``anchors`` (optional) are sequences on which the adapter must NOT change the model: their loss
is KL(untouched || adapted) at the labelled positions (the untouched model is the same network
with the adapter switched off), so a plant can change the model on one kind of text and keep
it on another (e.g. sharpen its own answers but not human-written ones).

>>> # lm2, info = lora_model(lm, examples, "runs/ctrl/lora", strength=0.5, cfg=LoraPlant())
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..core import LM, atomic_dir, data_hash
from ..runs import write_json

log = logging.getLogger(__name__)

__all__ = ["LoraPlant", "lora_model"]

_INFO = "train_info.json"
CHECKPOINT_EVERY = 2
"""Optimizer steps between training checkpoints (``<adapter>.partial/``)."""


@dataclass(frozen=True)
class LoraPlant:
    """Settings of a control's LoRA adapter (small: minutes on one CPU thread)."""

    r: int = 8
    """LoRA rank."""
    alpha: float = 16.0
    """LoRA scale numerator (scale = alpha / r)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    epochs: float = 3.0
    """Passes over the training examples."""
    batch_size: int = 8
    """Sequences per optimizer step."""
    seed: int = 0
    """Seed of the LoRA init and the data order."""
    anchor_weight: float = 1.0
    """Weight of the KL(untouched || adapted) loss on anchor sequences (when given)."""
    target_temperature: float | None = None
    """None: cross-entropy on the examples' labels. A temperature t: the examples' loss is
    KL(untouched at temperature t || adapted) at their labelled positions instead (soft
    self-distillation; t < 1 plants a sharper copy of the untouched model on that text)."""


def _kl_step(model, tok, anchors, dev, temperature: float = 1.0):
    """KL(untouched || adapted) per labelled anchor token (the adapter off = untouched; its
    logits divided by ``temperature``: < 1 is a sharpened untouched target)."""
    import torch.nn.functional as F

    from ..audit import collate

    ids, mask, lab = collate(anchors, tok.pad_token_id or 0)
    ids, mask, keep = ids.to(dev), mask.to(dev), (lab[:, 1:] != -100).to(dev)  # (B, T-1)
    with torch.no_grad(), model.disable_adapter():
        ref = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                            / temperature, -1)
    new = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
    kl = (ref.exp() * (ref - new)).sum(-1)  # (B, T-1)
    return kl[keep].mean()


def _fingerprint(examples, anchors, cfg: LoraPlant) -> str:
    return data_hash(asdict(cfg), examples, anchors)


def _save_checkpoint(ckpt: Path, model, opt, state: dict) -> None:
    """The adapter weights, the optimizer state (flattened tensors) and the loop's state."""
    from peft import get_peft_model_state_dict

    from ..core import atomic_save_tensors, atomic_write_json

    osd = opt.state_dict()
    flat = {f"{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v))
            for i, st in osd["state"].items() for k, v in st.items()}
    with atomic_dir(ckpt) as tmp:
        atomic_save_tensors(tmp / "adapter.safetensors", get_peft_model_state_dict(model))
        atomic_save_tensors(tmp / "optimizer.safetensors", flat)
        atomic_write_json(tmp / "state.json", {**state, "param_groups": osd["param_groups"]})


def _load_checkpoint(ckpt: Path, model, opt, fingerprint: str) -> dict | None:
    """The saved loop state (weights and optimizer restored in place), or None when there is
    no checkpoint of this training (other examples or settings: it is ignored)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if not (ckpt / "state.json").exists():
        return None
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    if state.get("fingerprint") != fingerprint:
        log.warning("LoRA plant: ignoring the checkpoint in %s (other examples or settings)", ckpt)
        return None
    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter.safetensors")))
    flat, st = load_file(str(ckpt / "optimizer.safetensors")), {}
    for key, v in flat.items():
        i, k = key.split(".", 1)
        st.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": st, "param_groups": state["param_groups"]})
    return state


def _train(lm, examples, cfg: LoraPlant, anchors=(), ckpt: Path | None = None,
           stop_after: int | None = None):
    """Train the adapter; with ``ckpt``, save a checkpoint every ``CHECKPOINT_EVERY`` steps and
    resume from one. ``stop_after`` (tests: an interruption) returns None after that step."""
    import math
    import random

    from tqdm.auto import tqdm

    from ..audit import OrganismConfig, collate, mean_loss, trainable_copy

    model = trainable_copy(lm, OrganismConfig(lora_r=cfg.r, lora_alpha=cfg.alpha, seed=cfg.seed))
    tok = lm.tokenizer
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps = math.ceil(len(examples) * cfg.epochs / cfg.batch_size)
    rng, order, aorder = random.Random(cfg.seed), [], []
    dev = next(model.parameters()).device
    losses, kls, t0, start, spent = [], [], time.time(), 0, 0.0
    fp = _fingerprint(examples, anchors, cfg)
    state = _load_checkpoint(ckpt, model, opt, fp) if ckpt is not None else None
    if state is not None:
        before, start, spent = state["loss_before"], state["step"], state["seconds"]
        losses, kls, order, aorder = state["losses"], state["anchor_kl"], state["order"], state["aorder"]
        v, internal, gauss = state["rng"]
        rng.setstate((v, tuple(internal), gauss))
        log.info("LoRA plant: resuming at step %d/%d from %s", start, steps, ckpt)
    else:
        before = mean_loss(model, tok, examples, cfg.batch_size)
    model.train()
    for step in tqdm(range(start, steps), desc="LoRA plant", unit="step", initial=start,
                     total=steps):
        while len(order) < cfg.batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        batch, order = [examples[i] for i in order[:cfg.batch_size]], order[cfg.batch_size:]
        if cfg.target_temperature is None:
            ids, mask, lab = collate(batch, tok.pad_token_id or 0)
            loss = model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                         labels=lab.to(dev)).loss
        else:
            loss = _kl_step(model, tok, batch, dev, cfg.target_temperature)
        total = loss
        if anchors:
            while len(aorder) < cfg.batch_size:
                aorder += rng.sample(range(len(anchors)), len(anchors))
            ab, aorder = [anchors[i] for i in aorder[:cfg.batch_size]], aorder[cfg.batch_size:]
            kl = _kl_step(model, tok, ab, dev)
            total = loss + cfg.anchor_weight * kl
            kls.append(kl.item())
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 5 == 0:
            log.info("LoRA plant step %d/%d loss %.3f%s", step, steps, losses[-1],
                     f" anchor KL {kls[-1]:.4f}" if kls else "")
        done = step + 1
        if ckpt is not None and done < steps and (done % CHECKPOINT_EVERY == 0
                                                  or done == stop_after):
            _save_checkpoint(ckpt, model, opt, {
                "fingerprint": fp, "step": done, "loss_before": before, "losses": losses,
                "anchor_kl": kls, "order": order, "aorder": aorder, "rng": rng.getstate(),
                "seconds": spent + time.time() - t0})
        if stop_after is not None and done == stop_after and done < steps:
            return None, None
    model.eval()
    after = mean_loss(model, tok, examples, cfg.batch_size)
    return model, {"loss_before": before, "loss_after": after, "steps": len(losses),
                   "train_seconds": spent + time.time() - t0, "resumed_at": start,
                   "losses": losses, "anchor_kl": kls}


def lora_model(lm, examples: Sequence[tuple[list, list]], adapter_dir, strength: float,
               cfg: LoraPlant = LoraPlant(), name: str = "lora", meta: dict | None = None,
               anchors: Sequence[tuple[list, list]] = ()) -> tuple[LM, dict]:
    """``lm`` with a LoRA adapter merged at ``strength`` x its trained scale.

    ``examples`` are ``(input_ids, labels)`` pairs (labels -100 where no loss is taken); they
    (and ``anchors``, see the module doc) are used only when ``adapter_dir`` holds no trained
    adapter yet. Returns the new LM and the
    training record (``train_info.json``: losses, steps, settings, ``meta``)."""
    if not strength > 0:
        raise ValueError(f"LoRA strength must be > 0; got {strength}")
    adir = Path(adapter_dir)
    if not (adir / _INFO).exists():
        if not examples:
            raise ValueError("no training examples for the LoRA plant")
        ckpt = adir.parent / f"{adir.name}.partial"
        model, info = _train(lm, list(examples), cfg, list(anchors), ckpt)
        info.update(settings=asdict(cfg), n_examples=len(examples), n_anchors=len(anchors),
                    meta=meta or {})
        with atomic_dir(adir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            write_json(tmp / _INFO, info)
        shutil.rmtree(ckpt, ignore_errors=True)  # the adapter is saved: the checkpoint is spent
        log.info("LoRA plant trained: loss %.3f -> %.3f in %d steps (%.0f s) -> %s",
                 info["loss_before"], info["loss_after"], info["steps"], info["train_seconds"], adir)
        del model
    info = json.loads((adir / _INFO).read_text(encoding="utf-8"))
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    from ..audit import merge

    model = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(adir))
    for m in model.modules():
        if isinstance(m, LoraLayer):
            m.scale_layer(float(strength))
    merged = merge(model)
    out = LM.from_hf(merged, lm.tokenizer, name=f"{lm.name}+{name}x{strength:g}")
    return out, info
