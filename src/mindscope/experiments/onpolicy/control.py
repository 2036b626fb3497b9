"""Positive control of the entropy gap: anchored self-distillation sharpens on-policy text only.

The plant: the untouched model answers a set of DISTILLATION prompts greedily; a LoRA adapter is
fine-tuned on those answers (loss on the answer tokens only) while an ANCHOR loss, KL(untouched
|| adapted) on human-written answers, keeps the model unchanged on off-policy text. The model's
own text becomes more predictable to it while human text does not, which is the entropy gap
the protocol measures. The protocol then runs unchanged on the merged model (LoRA at
``strength`` x its trained scale).

Why the anchor: plain self-distillation (``ANCHOR_WEIGHT = 0``) was tried first on SmolLM2 and
sharpened the model everywhere (own-text entropy 2.15 -> 0.97 nats, human-text 2.41 -> 1.12):
a global temperature change, which the off/on RATIO rightly does not count as an on-policy
effect (ratio 1.07-1.15, intervals all including 1).

Held out: the distillation prompts are the default corpus's chat prompts
(``data/corpus/chat_prompts.json``) minus every prompt of the shipped on-policy set; the anchor
texts are the human answers of the shipped prompts the protocol does NOT use (those after its
``n_prompts``); the protocol measures on the first ``n_prompts`` shipped prompts and their human
answers, so no prompt and no response token is on both sides (``effect`` records the split).

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
from .core import prompt_ids, response_ids, shipped
from .gap import sample_own

LORA = LoraPlant(r=8, alpha=16.0, lr=1e-3, epochs=3.0, batch_size=8, seed=0)
"""The adapter every strength scales (trained once per control folder)."""
N_DISTILL = 48
"""Distillation prompts (of 68 held-apart chat prompts)."""
DISTILL_TOKENS = 40
"""Greedy answer length of each distillation example."""
ANCHOR_WEIGHT = 1.0
"""Weight of the KL anchor on held-apart human answers (0 = plain self-distillation)."""
MIN_ANCHORS = 6
"""Fewest held-apart human answers the anchored plant needs."""


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


def anchor_examples(lm, cfg, max_tokens: int = 48):
    """(input_ids, labels) of the shipped prompts the run does not measure, with their human
    answers as the assistant turn; labels on the answer."""
    rows = shipped("prompts")[cfg.n_prompts:]
    if len(rows) < MIN_ANCHORS:
        from ...core import BadInputError
        raise BadInputError(f"the on-policy control anchors its plant on the human answers of "
                            f"the shipped prompts the run does not use; n_prompts="
                            f"{cfg.n_prompts} leaves {len(rows)} (need {MIN_ANCHORS}): use "
                            f"n_prompts <= {len(shipped('prompts')) - MIN_ANCHORS}")
    out = []
    for r in rows:
        ids = prompt_ids(lm, r["prompt"])
        resp = response_ids(lm, r["human"], max_tokens)
        out.append((ids + resp, [-100] * len(ids) + resp))
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


@control("onpolicy", detect=detect, strengths=(0.5, 1.0, 2.0), configure=configure)
def plant(lm, cfg, work_dir, strength) -> Planted:
    """Self-distillation LoRA (greedy own answers to held-apart prompts, KL-anchored on held-apart
    human answers), merged at
    ``strength`` x its trained scale; the adapter is trained once in ``<control>/lora``."""
    adapter = Path(work_dir).parent.parent / "lora"
    prompts, src = distill_prompts()
    used = {r["prompt"] for r in shipped("prompts")[:cfg.n_prompts]}
    if used & set(prompts):  # the split the module doc promises
        raise RuntimeError("distillation prompts overlap the measured prompts")
    lcfg = dataclasses.replace(LORA, anchor_weight=ANCHOR_WEIGHT)
    anchors = anchor_examples(lm, cfg) if ANCHOR_WEIGHT > 0 else []
    trained = (adapter / "train_info.json").exists()
    examples = [] if trained else distill_examples(lm, prompts)
    new, info = lora_model(lm, examples, adapter, strength, lcfg, name="selfdistill",
                           meta={"distill_prompts": len(prompts), "answer_tokens": DISTILL_TOKENS,
                                 "anchor_prompts": len(anchors)},
                           anchors=[] if trained else anchors)
    effect = {"kind": "LoRA self-distillation (greedy own answers)"
                      + (", KL-anchored on human answers" if anchors else ""),
              "summary": f"self-distillation LoRA x{strength:g}", "strength": strength,
              "lora": dataclasses.asdict(lcfg), "adapter": str(adapter),
              "train_loss": [info["loss_before"], info["loss_after"]], "steps": info["steps"],
              "trained_on": f"{len(prompts)} prompts of {src['source']} (greedy answers of "
                            f"{DISTILL_TOKENS} tokens); {src['removed_overlap']} prompts equal to "
                            "shipped on-policy prompts removed"
                            + (f"; KL anchor on the human answers of shipped prompts "
                               f"{cfg.n_prompts + 1}-{cfg.n_prompts + len(anchors)}" if anchors else ""),
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
