"""A LoRA plant for positive controls: train one adapter (peft, every linear layer) on labelled
token sequences, save it as safetensors, and hand back the model with the adapter merged at a
chosen scale (the control's *strength*: 0.5 = half the trained weight change).

Training runs once per adapter folder; later calls (another strength, a resumed control) load
the saved adapter. The caller's model is never touched.

>>> # lm2, info = lora_model(lm, examples, "runs/ctrl/lora", strength=0.5, cfg=LoraPlant())
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..core import LM, atomic_dir

log = logging.getLogger(__name__)

__all__ = ["LoraPlant", "lora_model"]

_INFO = "train_info.json"


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


def _train(lm, examples, cfg: LoraPlant):
    from ..audit import OrganismConfig, mean_loss, train_stage, trainable_copy

    model = trainable_copy(lm, OrganismConfig(lora_r=cfg.r, lora_alpha=cfg.alpha, seed=cfg.seed))
    before = mean_loss(model, lm.tokenizer, examples, cfg.batch_size)
    t0 = time.time()
    losses = train_stage(model, lm.tokenizer, examples, cfg.epochs, cfg.lr, cfg.batch_size,
                         cfg.seed, desc="LoRA plant")
    after = mean_loss(model, lm.tokenizer, examples, cfg.batch_size)
    return model, {"loss_before": before, "loss_after": after, "steps": len(losses),
                   "train_seconds": time.time() - t0, "losses": losses}


def lora_model(lm, examples: Sequence[tuple[list, list]], adapter_dir, strength: float,
               cfg: LoraPlant = LoraPlant(), name: str = "lora", meta: dict | None = None
               ) -> tuple[LM, dict]:
    """``lm`` with a LoRA adapter merged at ``strength`` x its trained scale.

    ``examples`` are ``(input_ids, labels)`` pairs (labels -100 where no loss is taken); they
    are used only when ``adapter_dir`` holds no trained adapter yet. Returns the new LM and the
    training record (``train_info.json``: losses, steps, settings, ``meta``)."""
    if not strength > 0:
        raise ValueError(f"LoRA strength must be > 0; got {strength}")
    adir = Path(adapter_dir)
    if not (adir / _INFO).exists():
        if not examples:
            raise ValueError("no training examples for the LoRA plant")
        model, info = _train(lm, list(examples), cfg)
        info.update(settings=asdict(cfg), n_examples=len(examples), meta=meta or {})
        with atomic_dir(adir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            (tmp / _INFO).write_text(json.dumps(info, indent=1), encoding="utf-8")
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
