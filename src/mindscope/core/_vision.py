"""Image + text prompts for vision-language models, through the model's processor.

An ``ImagePrompt`` holds text and images (PIL images or arrays). Where the text has no image
placeholder, one per image is put before the text. The processor expands each placeholder to
the model's image tokens; ``ms.role("image")`` then selects those token positions for capture,
SAEs and steering. Models with multimodal rotary positions (Qwen2-VL, Qwen2.5-VL) get their
3-D position ids from the model's ``get_rope_index`` (``rope_positions``), in every call
mindscope makes, generation included.

>>> # lm = LM.from_hf(vlm, tokenizer, processor=processor)
>>> # cap = lm.capture([ms.ImagePrompt("What is this?", [img])], "resid_post.2",
>>> #                  positions=ms.role("image"))
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from ._chat import ChatPrompt
from ._positions import RowMeta


@dataclass
class ImagePrompt:
    """Text with images. ``text`` may be a str or a rendered ChatPrompt; it may contain the
    processor's image placeholder once per image (else they are put in front)."""

    text: Any
    images: list = field(default_factory=list)


def image_token_id(model) -> int | None:
    cfg = model.config
    for k in ("image_token_id", "image_token_index"):
        v = getattr(cfg, k, None)
        if isinstance(v, int):
            return v
    return None


def placeholder(processor) -> str:
    for k in ("boi_token", "image_token"):
        v = getattr(processor, k, None) or getattr(processor.tokenizer, k, None)
        if isinstance(v, str):
            return v
    raise ValueError(f"{type(processor).__name__} names no image placeholder token "
                     "(boi_token / image_token); put the model's image token in the text")


def _wrapped(lm, mark: str) -> str:
    """The placeholder with the model's vision start/end tokens around it where it has them
    (Qwen2-VL: ``<|vision_start|><|image_pad|><|vision_end|>``, as its chat template writes)."""
    cfg = lm.model.config
    a, b = getattr(cfg, "vision_start_token_id", None), getattr(cfg, "vision_end_token_id", None)
    if isinstance(a, int) and isinstance(b, int):
        start, end = lm.tokenizer.convert_ids_to_tokens([a, b])
        return f"{start}{mark}{end}"
    return mark


def add_placeholders(lm, text: str, n_images: int) -> str:
    """``text`` with one image placeholder per image in front, unless it has placeholders."""
    mark = placeholder(lm.processor)
    return text if mark in text else (_wrapped(lm, mark) + "\n") * n_images + text


def rope_positions(model, input_ids: torch.Tensor, mask: torch.Tensor, kw: dict):
    """Multimodal rotary positions of a prompt with images (Qwen2-VL-style models: image tokens
    get (temporal, height, width) positions and the text after them continues from the largest):
    ``(position_ids (3, B, T), delta (B, 1))`` from the model's own ``get_rope_index``, where
    ``delta`` shifts the 1-D positions of tokens generated afterwards. None for other models and
    for prompts without images (plain 1-D positions are right there)."""
    inner = getattr(model, "model", None)
    fn = getattr(inner, "get_rope_index", None)
    if fn is None or (kw.get("image_grid_thw") is None and kw.get("video_grid_thw") is None):
        return None
    names = inspect.signature(fn).parameters
    args = {k: v for k, v in kw.items() if k in names and k != "input_ids"}
    dev = input_ids.device
    pos, delta = fn(input_ids, attention_mask=mask.to(dev), **args)
    return pos, delta.view(-1, 1)


def encode(lm, prompt: ImagePrompt, text: str, roles: list) -> tuple[list[int], RowMeta, dict]:
    """-> token ids, row metadata (text rebuilt from the tokens, so spans still resolve), and
    per-row model inputs (``pixel_values`` etc. with a leading image axis; token-level
    inputs as (T,))."""
    proc = lm.processor
    if proc is None:
        raise ValueError(f"{lm.name} has no processor for images: build the LM with "
                         "LM.from_hf(model, tokenizer, processor=AutoProcessor...) or use a "
                         "vision-language model")
    if not prompt.images:
        raise ValueError("an ImagePrompt needs at least one image")
    mark = placeholder(proc)
    n = text.count(mark)
    if n == 0:
        text = add_placeholders(lm, text, len(prompt.images))
    elif n != len(prompt.images):
        raise ValueError(f"the prompt has {n} image placeholders ({mark!r}) for "
                         f"{len(prompt.images)} images; give one per image or none")
    out = proc(text=[text], images=[list(prompt.images)], return_tensors="pt")
    ids = out["input_ids"][0].tolist()
    extras = {}
    for k, v in out.items():
        if k in ("input_ids", "attention_mask") or not isinstance(v, torch.Tensor):
            continue
        token_level = v.dim() == 2 and v.shape == (1, len(ids))  # (1, T): e.g. mm_token_type_ids
        extras[k] = v[0] if token_level else v
    pieces = [lm.tokenizer.decode([t]) for t in ids]
    offs, pos = [], 0
    for p in pieces:
        offs.append((pos, pos + len(p)))
        pos += len(p)
    full = "".join(pieces)
    spans, at = [], 0
    src = prompt.text.text if isinstance(prompt.text, ChatPrompt) else ""
    for r, a, b in roles:  # find each turn's content again in the rebuilt text
        i = full.find(src[a:b], at)
        if i >= 0:
            spans.append((r, i, i + (b - a)))
            at = i + (b - a)
    return ids, RowMeta(text=full, offsets=offs, roles=spans), extras


def model_inputs(extras: list[dict] | None, mask: torch.Tensor) -> dict:
    """Per-row inputs -> batch inputs for a left-padded (B, T) mask: image tensors joined
    along their image axis, token-level ones (T_row,) left-padded with zeros."""
    if not extras or not any(extras):
        return {}
    B, T = mask.shape
    n = mask.sum(-1)
    out: dict = {}
    keys = sorted({k for e in extras for k in e})
    for k in keys:
        vals = [e.get(k) for e in extras]
        if all(v is None or (v.dim() == 1 and v.shape[0] == int(n[i]))
               for i, v in enumerate(vals)):
            t = torch.zeros(B, T, dtype=next(v for v in vals if v is not None).dtype)
            for i, v in enumerate(vals):
                if v is not None:
                    t[i, T - v.shape[0]:] = v
            out[k] = t
        else:
            out[k] = torch.cat([v for v in vals if v is not None])
    return out
