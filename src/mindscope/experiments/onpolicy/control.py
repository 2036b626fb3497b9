"""Positive control of the entropy gap: self-distillation sharpens on-policy distributions.

The plant: the untouched model answers a set of DISTILLATION prompts greedily; a LoRA adapter is
fine-tuned on those answers (loss on the answer tokens only). Training on the model's own
most-likely text makes its own (sampled) text more predictable to it, so the next-token entropy
on on-policy responses should drop more than on human-written ones and the off/on ratio grow.
The protocol then runs unchanged on the merged model (LoRA at ``strength`` x its trained scale).

Held out: the distillation prompts are the default corpus's chat prompts
(``data/corpus/chat_prompts.json``) minus every prompt of the shipped on-policy set, and the
protocol measures on the shipped on-policy prompts and their human answers, so no prompt and no
response token is on both sides (``effect`` records the counts and the overlap removed).

Detection: the off/on entropy ratio against the human answers (``gap.ratios.human``: ratio of
means, paired bootstrap over prompts); no effect = 1.
"""
from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

from .._control import Detection, Planted, control
from .._lora import LoraPlant, lora_model
from .core import prompt_ids, shipped
from .gap import sample_own

LORA = LoraPlant(r=8, alpha=16.0, lr=1e-3, epochs=3.0, batch_size=8, seed=0)
"""The adapter every strength scales (trained once per control folder)."""
N_DISTILL = 48
"""Distillation prompts (of 68 held-apart chat prompts)."""
DISTILL_TOKENS = 40
"""Greedy answer length of each distillation example."""


def distill_prompts(n: int = N_DISTILL) -> tuple[list[str], dict]:
    """The first ``n`` default-corpus chat prompts that are not shipped on-policy prompts."""
    f = resources.files("mindscope") / "data" / "corpus" / "chat_prompts.json"
    pool = json.loads(f.read_text(encoding="utf-8"))["prompts"]
    held = {r["prompt"].strip().lower() for r in shipped("prompts")}
    keep = [p for p in pool if p.strip().lower() not in held]
    return keep[:n], {"pool": len(pool), "removed_overlap": len(pool) - len(keep),
                      "source": "data/corpus/chat_prompts.json"}


def distill_examples(lm, prompts, max_new_tokens: int = DISTILL_TOKENS, seed: int = 0):
    """(input_ids, labels) of each prompt + the model's greedy answer; loss on the answer only."""
    own = sample_own(lm, prompts, max_new_tokens, 0.0, 1.0, seed)
    out = []
    for p, r in zip(prompts, own):
        if not r:
            continue
        ids = prompt_ids(lm, p)
        out.append((ids + list(r), [-100] * len(ids) + list(r)))
    return out


def configure(cfg):
    """The gap alone, against the human answers (the headline measure)."""
    return dataclasses.replace(cfg, protocols=("gap",), offpolicy=("human",))


def detect(results: dict) -> Detection:
    r = results.get("gap", {}).get("ratios", {}).get("human")
    if not r:
        raise ValueError("results.json has no gap.ratios.human: run the gap against human answers")
    lo, hi = r["ci"]
    return Detection("off/on entropy ratio vs human answers", r["ratio"], lo, hi, null=1.0,
                     n=r["n"])


@control("onpolicy", detect=detect, strengths=(0.5, 1.0), configure=configure)
def plant(lm, cfg, work_dir, strength) -> Planted:
    """Self-distillation LoRA (on the model's greedy answers to held-apart prompts), merged at
    ``strength`` x its trained scale; the adapter is trained once in ``<control>/lora``."""
    adapter = Path(work_dir).parent.parent / "lora"
    prompts, src = distill_prompts()
    used = {r["prompt"] for r in shipped("prompts")[:cfg.n_prompts]}
    if used & set(prompts):  # the split the module doc promises
        raise RuntimeError("distillation prompts overlap the measured prompts")
    examples = [] if (adapter / "train_info.json").exists() else distill_examples(lm, prompts)
    new, info = lora_model(lm, examples, adapter, strength, LORA, name="selfdistill",
                           meta={"distill_prompts": len(prompts), "answer_tokens": DISTILL_TOKENS})
    effect = {"kind": "LoRA self-distillation (greedy own answers)",
              "summary": f"self-distillation LoRA x{strength:g}", "strength": strength,
              "lora": dataclasses.asdict(LORA), "adapter": str(adapter),
              "train_loss": [info["loss_before"], info["loss_after"]], "steps": info["steps"],
              "trained_on": f"{len(prompts)} prompts of {src['source']} (greedy answers of "
                            f"{DISTILL_TOKENS} tokens); {src['removed_overlap']} prompts equal to "
                            "shipped on-policy prompts removed",
              "held_out": f"the {len(used)} shipped on-policy prompts and their human answers "
                          "the protocol measures on"}
    return Planted(new, effect)


def mde_ratio(det: dict) -> float:
    """The smallest off/on ratio a run like ``det`` (a ``Detection`` dict of the untouched
    model) detects with 80% power: the paired bootstrap interval read as a normal one on the
    log scale, ``runs.mde_mean`` on the log ratio, back to a ratio."""
    import math

    from ...runs import mde_mean

    se = (math.log(det["hi"]) - math.log(det["lo"])) / (2 * 1.96)
    return math.exp(mde_mean(se * math.sqrt(det["n"]), det["n"]))
