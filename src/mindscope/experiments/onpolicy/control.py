"""Positive control of the entropy gap: anchored self-distillation sharpens on-policy text only.

The plant: the untouched model samples its own answers (T = ``DISTILL_SAMPLE_T``, the protocol's
own-answer temperature) to a set of DISTILLATION prompts; a LoRA adapter is trained towards a
SHARPER copy of the untouched model on those answers (KL to the untouched distribution at
temperature ``TARGET_T``, on the answer tokens only) while an ANCHOR loss, KL(untouched ||
adapted) on human-written answers, keeps the model unchanged on off-policy text. The model
becomes more certain on its own kind of text and stays as it was on human text, which is the
entropy gap the protocol measures. The protocol then runs unchanged on the merged model (LoRA
at ``strength`` x its trained scale; x1 = the trained adapter, the control's full strength).

Why the anchor: plain self-distillation (``ANCHOR_WEIGHT = 0``) sharpened SmolLM2 everywhere
(own-text entropy 2.15 -> 0.97 nats, human-text 2.41 -> 1.12): a global temperature change,
which the off/on RATIO rightly does not count. Why anchor answers of the MEASURED KIND, to
prompts of the distillation kind: anchored only on stdlib-documentation chats and stories, the
adapter told "sharpen" from "keep" by the kind of prompt, so the measured human answers (to
everyday questions, like the distillation prompts) were sharpened too (entropy 2.40 -> 1.46).
With human answers to everyday questions in the anchor (the unmeasured shipped answers and
``data/onpolicy/anchor_answers.jsonl``, written for mindscope to distillation prompts by an
AI coding agent) the
adapter can only tell them apart by the answer, and the measured human answers keep their
entropy (docs/experiments/onpolicy.md).

Held out (split by the source of the tokens, recorded in ``effect`` and ``train_info.json``):
the protocol measures the first ``n_prompts`` shipped prompts and their human answers; none of
them is trained on. The distillation prompts are the default corpus's chat prompts
(``data/corpus/chat_prompts.json``) minus every shipped on-policy prompt, plus the shipped
prompts the run does not measure (``spare_rows``); the anchor answers are the unmeasured shipped
answers, the written anchor answers, stdlib-documentation chats of the default corpus and the
shipped emotion stories. A saved adapter trained on a prompt the run measures is refused
(``BadInputError``); at ``n_prompts=24`` no shipped answer is spare and the anchor has the
written ones only (a warning says so).

Detection: the off/on entropy ratio against the human answers (``gap.ratios.human``: ratio of
means, paired bootstrap over prompts); no effect = 1. ``paired_vs_untouched`` adds the planted
run's ratio over the untouched run's on the same prompts (descriptive).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Sequence

from .._control import Detection, Planted, control
from .._lora import LoraPlant, lora_model
from .core import prompt_ids, response_ids, shipped
from .gap import sample_own

log = logging.getLogger(__name__)

LORA = LoraPlant(r=8, alpha=16.0, lr=2e-3, epochs=3.0, batch_size=8, seed=0)
"""The adapter every strength scales (trained once per control folder)."""
N_DISTILL = 64
"""Distillation prompts (of the 68 held-apart chat prompts)."""
DISTILL_TOKENS = 40
"""Own-answer length of each distillation example."""
DISTILL_SAMPLE_T = 1.0
"""Temperature the untouched model's own distillation answers are sampled at (0 = greedy): 1.0 is
the protocol's own-answer temperature, so the plant trains on text like the text it is measured
on."""
TARGET_T = 0.35
"""The distillation target: the untouched model's distribution at this temperature on its own
answers (KL, ``LoraPlant.target_temperature``); None = cross-entropy on the sampled tokens."""
ANCHOR_WEIGHT = 2.0
"""Weight of the KL anchor on held-apart human-written text (0 = plain self-distillation)."""
ANCHOR_TOKENS = 48
"""Tokens of each anchor answer."""
N_DOCS_QA = 64
"""Anchor examples from the default corpus's stdlib-documentation chats (human-written answers)."""
STORY_PROMPT = "Tell me a very short story."
"""The user turn before each shipped emotion story used as an anchor answer."""
SPARE_REPEAT = 4
"""Times each unmeasured shipped answer appears in the anchor list (it is the anchor text most
like the measured answers; 12 of them among 154 others would be sampled rarely)."""
SPARE_DISTILL = True
"""Also distil on the model's own answers to the unmeasured shipped prompts (the anchor's
own prompts): the same prompt with its own answer sharpened and its human answer kept."""
N_WRITTEN = 40
"""Anchor answers from ``data/onpolicy/anchor_answers.jsonl``: answers written for mindscope
(by the session-7 engineer, an AI coding agent: off-policy for the model, not human) to
distillation prompts (never to a shipped on-policy prompt), each repeated
``SPARE_REPEAT`` times like the unmeasured shipped answers."""
MIN_ANCHORS = 6
"""Fewest anchor examples the anchored plant needs."""


def distill_prompts(n: int | None = None) -> tuple[list[str], dict]:
    """The first ``n`` (None = ``N_DISTILL``) default-corpus chat prompts that are not shipped
    on-policy prompts."""
    n = N_DISTILL if n is None else n
    f = resources.files("mindscope") / "data" / "corpus" / "chat_prompts.json"
    pool = json.loads(f.read_text(encoding="utf-8"))["prompts"]
    held = {r["prompt"].strip().lower() for r in shipped("prompts")}
    keep = [p for p in pool if p.strip().lower() not in held]
    return keep[:n], {"pool": len(pool), "removed_overlap": len(pool) - len(keep),
                      "source": "data/corpus/chat_prompts.json"}


def distill_examples(lm, prompts, max_new_tokens: int | None = None, seed: int = 0,
                     temperature: float | None = None):
    """(input_ids, labels) of each prompt + the model's own answer (``max_new_tokens``, None =
    ``DISTILL_TOKENS``; sampled at ``temperature``, None = ``DISTILL_SAMPLE_T``, 0 = greedy);
    loss on the answer only."""
    max_new_tokens = DISTILL_TOKENS if max_new_tokens is None else max_new_tokens
    temperature = DISTILL_SAMPLE_T if temperature is None else temperature
    own = sample_own(lm, prompts, max_new_tokens, temperature, 1.0, seed)
    out = []
    for p, r in zip(prompts, own):
        if not r:
            continue
        ids = prompt_ids(lm, p)
        out.append((ids + list(r), [-100] * len(ids) + list(r)))
    return out


def spare_rows(n_prompts: int) -> list[dict]:
    """The shipped on-policy rows (prompt + human answer) a run at ``n_prompts`` does NOT measure
    (the protocol measures the first ``n_prompts``): the anchor's answers of the measured kind."""
    return shipped("prompts")[n_prompts:]


def anchor_texts(n_docs: int | None = None, spare: Sequence[dict] = ()
                 ) -> tuple[list[tuple[str, str]], dict]:
    """(prompt, human-written answer) pairs the plant must leave unchanged, never a measured one:

    * ``spare``: shipped on-policy rows the run does not measure (``spare_rows``), each repeated
      ``SPARE_REPEAT`` times: human answers of the kind the protocol measures, to prompts of the
      kind the plant distils on, so the adapter can only tell "sharpen" from "keep" by the answer;
    * the first ``n_docs`` (None = ``N_DOCS_QA``) stdlib-documentation chats of the default
      corpus (a question about a function answered by its docstring);
    * the shipped emotion stories (``data/emotions/stories.json``) as answers to ``STORY_PROMPT``.
    """
    from ...activations import build_default_corpus

    n_docs = N_DOCS_QA if n_docs is None else n_docs
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
    written = shipped("anchor_answers")[:N_WRITTEN] if N_WRITTEN > 0 else []
    own_kind = [(r["prompt"], r["human"]) for r in list(spare) + written] * SPARE_REPEAT
    return own_kind + docs + stories, {"shipped_answers": [r["id"] for r in spare],
                                       "written_answers": len(written),
                                       "shipped_repeat": SPARE_REPEAT,
                                       "stdlib_docs_qa": len(docs),
                                       "emotion_stories": len(stories)}


def anchor_examples(lm, pairs=None, max_tokens: int | None = None):
    """(input_ids, labels) of every anchor pair (``pairs``; None = ``anchor_texts()``), the
    human-written answer as the assistant turn; labels on the answer."""
    pairs = anchor_texts()[0] if pairs is None else pairs
    max_tokens = ANCHOR_TOKENS if max_tokens is None else max_tokens
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
    """Self-distillation LoRA (sharpened on sampled own answers to held-apart prompts, KL-anchored
    on held-apart human answers), merged at ``strength`` x its trained scale; the adapter is trained once in
    ``<control>/lora``. The shipped prompts the run does not measure (``spare_rows``) lend their
    human answers to the anchor and their prompts to the distillation; a saved adapter that used
    a prompt this run measures is refused."""
    from ...core import BadInputError

    adapter = Path(work_dir).parent.parent / "lora"
    measured = shipped("prompts")[:cfg.n_prompts]
    used = {r["id"] for r in measured}
    trained = (adapter / "train_info.json").exists()
    if trained:
        meta = json.loads((adapter / "train_info.json").read_text(encoding="utf-8")).get("meta", {})
        clash = sorted(used & set(meta.get("shipped_prompts", [])))
        if clash:
            raise BadInputError(
                f"the on-policy plant in {adapter} was trained on shipped prompts {', '.join(clash)}, "
                f"which this run measures (n_prompts={cfg.n_prompts}): use a new output folder "
                "(a new plant is trained without them) or the n_prompts it was trained for")
    spare = spare_rows(cfg.n_prompts)
    if not spare and not trained:
        log.warning("on-policy plant: n_prompts=%d measures every shipped prompt, so the anchor "
                    "has no human answers of the measured kind (stdlib docs and stories only; "
                    "a weaker plant, docs/experiments/onpolicy.md)", cfg.n_prompts)
    prompts, src = distill_prompts()
    sprompts = [r["prompt"] for r in spare] if SPARE_DISTILL else []
    if {r["prompt"] for r in measured} & set(prompts + sprompts):  # the split the module doc promises
        raise RuntimeError("distillation prompts overlap the measured prompts")
    lcfg = dataclasses.replace(LORA, anchor_weight=ANCHOR_WEIGHT, target_temperature=TARGET_T)
    anchors, asrc = [], {}
    if ANCHOR_WEIGHT > 0 and not trained:
        pairs, asrc = anchor_texts(spare=spare)  # the corpus is read once
        anchors = anchor_examples(lm, pairs)
    examples = [] if trained else distill_examples(lm, prompts + sprompts)
    shipped_used = sorted({r["id"] for r in spare} if (sprompts or asrc.get("shipped_answers"))
                          else set())
    new, info = lora_model(lm, examples, adapter, strength, lcfg, name="selfdistill",
                           meta={"distill_prompts": len(prompts), "answer_tokens": DISTILL_TOKENS,
                                 "answer_temperature": DISTILL_SAMPLE_T,
                                 "distill_shipped": len(sprompts), "anchors": asrc,
                                 "shipped_prompts": shipped_used},
                           anchors=anchors)
    meta = info.get("meta", {})  # what the saved adapter was trained with
    asrc, ids = meta.get("anchors") or {}, meta.get("shipped_prompts", [])
    n_sd = meta.get("distill_shipped", 0)
    saved = info.get("settings", dataclasses.asdict(lcfg))
    tt, st = saved.get("target_temperature"), meta.get("answer_temperature", 0.0)
    ntok = meta.get("answer_tokens", DISTILL_TOKENS)
    how = (f"towards the untouched model at T={tt:g}" if tt else "cross-entropy")
    effect = {"kind": f"LoRA self-distillation ({how} on own answers sampled at T={st:g})"
                      + (", KL-anchored on human-written answers" if asrc else ""),
              "summary": f"self-distillation LoRA x{strength:g}", "strength": strength,
              "lora": saved, "adapter": str(adapter),
              "train_loss": [info["loss_before"], info["loss_after"]], "steps": info["steps"],
              "shipped_prompts_trained_on": ids,
              "trained_on": f"{meta.get('distill_prompts', len(prompts))} prompts of "
                            f"{src['source']} and {n_sd} unmeasured shipped on-policy prompts "
                            f"(own answers of {ntok} tokens sampled at T={st:g}); "
                            f"{src['removed_overlap']} chat prompts equal to shipped on-policy "
                            "prompts removed"
                            + (f"; KL anchor on human-written answers: "
                               f"{len(asrc.get('shipped_answers', []))} unmeasured shipped "
                               f"on-policy answers ({', '.join(asrc.get('shipped_answers', [])) or 'none'}"
                               f"), {asrc.get('written_answers', 0)} written answers to distillation "
                               "prompts (data/onpolicy/anchor_answers.jsonl; these two sets "
                               f"x{asrc.get('shipped_repeat', 1)}), {asrc['stdlib_docs_qa']} "
                               "stdlib-documentation chats of the default corpus, "
                               f"{asrc['emotion_stories']} shipped emotion stories "
                               "(data/emotions/stories.json)" if asrc else ""),
              "held_out": f"the {len(used)} shipped on-policy prompts ({min(used)}-{max(used)}) "
                          "and their human answers the protocol measures on; none of them is "
                          "trained on"}
    return Planted(new, effect)


def mde_ratio(det: dict) -> float:
    """The smallest off/on ratio a run like ``det`` (a ``Detection`` dict of the untouched
    model) detects with 80% power: the paired bootstrap interval read as a normal one on the
    log scale, ``runs.mde_mean`` on the log ratio, back to a ratio."""
    import math

    from ...runs import mde_mean

    se = (math.log(det["hi"]) - math.log(det["lo"])) / (2 * 1.96)
    return math.exp(mde_mean(se * math.sqrt(det["n"]), det["n"]))


def paired_vs_untouched(planted: dict, untouched: dict, cond: str = "human", n_boot: int = 1000,
                        seed: int = 0) -> dict:
    """The planted run's off/on ratio over the untouched run's, on the prompts both hold, with a
    paired bootstrap over prompts (one index set resamples both runs' own and off-policy
    entropies; descriptive, not part of the control's pass rule). ``planted``/``untouched`` are
    results.json dicts of the same config and seed (``gap.per_prompt``)."""
    import numpy as np

    from ...runs import bootstrap_ci

    try:
        a, b = planted["gap"]["per_prompt"], untouched["gap"]["per_prompt"]
    except KeyError:
        raise ValueError("results.json has no gap.per_prompt: rerun the gap (runs made before "
                         "it was recorded lack it)") from None
    keys = sorted(set(a["own"]) & set(a[cond]) & set(b["own"]) & set(b[cond]), key=int)
    if len(keys) < 2:
        raise ValueError(f"the two runs share {len(keys)} prompt(s) with own and {cond} "
                         "entropies; need 2")
    p_off, p_on, u_off, u_on = (np.array([d[k] for k in keys])
                                for d in (a[cond], a["own"], b[cond], b["own"]))
    est, lo, hi = bootstrap_ci(lambda i: (p_off[i].mean() / p_on[i].mean())
                               / (u_off[i].mean() / u_on[i].mean()), len(keys), n_boot, seed)
    return {"ratio_of_ratios": est, "ci": [lo, hi], "n": len(keys)}


def paired_rows(control_dir, strength: str = "1", n_boot: int = 1000) -> list[dict]:
    """``paired_vs_untouched`` per seed of a control folder (``planted-<strength>/seed<k>`` vs
    ``untouched/seed<k>``; the bootstrap seed is the run's seed)."""
    root, out = Path(control_dir), []
    for d in sorted((root / f"planted-{strength}").glob("seed*"), key=lambda p: int(p.name[4:])):
        u = root / "untouched" / d.name / "results.json"
        if not (d / "results.json").exists() or not u.exists():
            continue
        k = int(d.name[4:])
        r = paired_vs_untouched(json.loads((d / "results.json").read_text(encoding="utf-8")),
                                json.loads(u.read_text(encoding="utf-8")), n_boot=n_boot, seed=k)
        out.append({"seed": k, **r})
    return out
