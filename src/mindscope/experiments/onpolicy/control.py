"""Positive control of the entropy gap: anchored self-distillation sharpens on-policy text only.

The plant: the untouched model answers a set of DISTILLATION prompts greedily; a LoRA adapter is
fine-tuned on those answers (loss on the answer tokens only) while an ANCHOR loss, KL(untouched
|| adapted) on human-written answers, keeps the model unchanged on off-policy text. The model's
own text becomes more predictable to it while human text does not, which is the entropy gap
the protocol measures. The protocol then runs unchanged on the merged model (LoRA at
``strength`` x its trained scale; x1 = the trained adapter, the control's full strength).

Why the anchor: plain self-distillation (``ANCHOR_WEIGHT = 0``) sharpened SmolLM2 everywhere
(own-text entropy 2.15 -> 0.97 nats, human-text 2.41 -> 1.12): a global temperature change,
which the off/on RATIO rightly does not count. Why a large, varied anchor set: anchored on only
12 human answers, the KL held on those 12 texts but not on the measured ones (their entropy
fell 2.41 -> 1.82 nats), and the gap stayed below what 12 prompts can see.

Held out (split by the source of the tokens, recorded in ``effect``): the distillation prompts
are the default corpus's chat prompts (``data/corpus/chat_prompts.json``) minus every shipped
on-policy prompt; the anchor answers are stdlib-documentation chats of the default corpus
(docstrings answering questions about functions) and the shipped emotion stories
(``data/emotions/stories.json``), never a shipped on-policy prompt or answer; the protocol
measures on the first ``n_prompts`` shipped prompts and their human answers.

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
N_DISTILL = 64
"""Distillation prompts (of the 68 held-apart chat prompts)."""
DISTILL_TOKENS = 40
"""Greedy answer length of each distillation example."""
ANCHOR_WEIGHT = 2.0
"""Weight of the KL anchor on held-apart human-written text (0 = plain self-distillation)."""
ANCHOR_TOKENS = 48
"""Tokens of each anchor answer."""
N_DOCS_QA = 64
"""Anchor examples from the default corpus's stdlib-documentation chats (human-written answers)."""
STORY_PROMPT = "Tell me a very short story."
"""The user turn before each shipped emotion story used as an anchor answer."""
MIN_ANCHORS = 6
"""Fewest anchor examples the anchored plant needs."""


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


def anchor_texts(n_docs: int = N_DOCS_QA) -> tuple[list[tuple[str, str]], dict]:
    """(prompt, human-written answer) pairs the plant must leave unchanged, none from the shipped
    on-policy set (so no measured answer is ever trained on, whatever ``n_prompts``): the first
    ``n_docs`` stdlib-documentation chats of the default corpus (a question about a function
    answered by its docstring) and the shipped emotion stories (``data/emotions/stories.json``)
    as answers to ``STORY_PROMPT``."""
    from ...activations import build_default_corpus

    docs = []
    if n_docs > 0:
        with open(build_default_corpus() / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                d = json.loads(line)
                if d.get("source") != "stdlib-docs-qa":
                    continue
                msgs = d["messages"]
                user = [m["content"] for m in msgs if m["role"] == "user"]
                reply = [m["content"] for m in msgs if m["role"] == "assistant"]
                if len(user) == 1 and len(reply) == 1 and reply[0].strip():
                    docs.append((user[0], reply[0]))
                    if len(docs) == n_docs:
                        break
    f = resources.files("mindscope") / "data" / "emotions" / "stories.json"
    stories = [(STORY_PROMPT, t) for v in json.loads(f.read_text(encoding="utf-8")).values()
               for t in v]
    return docs + stories, {"stdlib_docs_qa": len(docs), "emotion_stories": len(stories)}


def anchor_examples(lm, pairs=None, max_tokens: int = ANCHOR_TOKENS):
    """(input_ids, labels) of every anchor pair (``pairs``; None = ``anchor_texts()``), the
    human-written answer as the assistant turn; labels on the answer."""
    pairs = anchor_texts()[0] if pairs is None else pairs
    if len(pairs) < MIN_ANCHORS:
        from ...core import BadInputError
        raise BadInputError(f"the on-policy control anchors its plant on {len(pairs)} held-apart "
                            f"human-written answers (need {MIN_ANCHORS})")
    out = []
    for prompt, text in pairs:
        ids = prompt_ids(lm, prompt)
        resp = response_ids(lm, text, max_tokens)
        out.append((ids + resp, [-100] * len(ids) + resp))
    return out


def configure(cfg):
    """The gap alone, against the human answers (the headline measure), at the run's
    ``n_prompts``. Not more prompts: the untouched SmolLM2 has a small gap of its own (ratio
    ~1.09), which 24 prompts already detect in one seed of three (docs/experiments/onpolicy.md)."""
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
    """Self-distillation LoRA (greedy own answers to held-apart prompts, KL-anchored on held-apart
    human answers), merged at
    ``strength`` x its trained scale; the adapter is trained once in ``<control>/lora``."""
    adapter = Path(work_dir).parent.parent / "lora"
    prompts, src = distill_prompts()
    used = {r["prompt"] for r in shipped("prompts")[:cfg.n_prompts]}
    if used & set(prompts):  # the split the module doc promises
        raise RuntimeError("distillation prompts overlap the measured prompts")
    lcfg = dataclasses.replace(LORA, anchor_weight=ANCHOR_WEIGHT)
    trained = (adapter / "train_info.json").exists()
    anchors, asrc = [], {}
    if ANCHOR_WEIGHT > 0 and not trained:
        pairs, asrc = anchor_texts()  # the corpus is read once
        anchors = anchor_examples(lm, pairs)
    examples = [] if trained else distill_examples(lm, prompts)
    new, info = lora_model(lm, examples, adapter, strength, lcfg, name="selfdistill",
                           meta={"distill_prompts": len(prompts), "answer_tokens": DISTILL_TOKENS,
                                 "anchors": asrc},
                           anchors=anchors)
    asrc = info.get("meta", {}).get("anchors") or {}  # what the saved adapter was trained with
    effect = {"kind": "LoRA self-distillation (greedy own answers)"
                      + (", KL-anchored on human-written answers" if asrc else ""),
              "summary": f"self-distillation LoRA x{strength:g}", "strength": strength,
              "lora": dataclasses.asdict(lcfg), "adapter": str(adapter),
              "train_loss": [info["loss_before"], info["loss_after"]], "steps": info["steps"],
              "trained_on": f"{len(prompts)} prompts of {src['source']} (greedy answers of "
                            f"{DISTILL_TOKENS} tokens); {src['removed_overlap']} prompts equal to "
                            "shipped on-policy prompts removed"
                            + (f"; KL anchor on human-written answers: {asrc['stdlib_docs_qa']} "
                               "stdlib-documentation chats of the default corpus, "
                               f"{asrc['emotion_stories']} shipped emotion stories "
                               "(data/emotions/stories.json); no shipped on-policy prompt or "
                               "answer" if asrc else ""),
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
