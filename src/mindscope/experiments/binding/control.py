"""Positive control of the binding protocol: fine-tune "who came after X" until the prior slot
is needed, then ask whether ablating it (vs an equal-rank random subspace) hurts induction.

The plant: a LoRA adapter trained on synthetic stories followed by the protocol's induction
cue ("The next day they came back in the same order: A, B,") and the rest of the names in story
order (loss on the continuation only), i.e. entity-level induction, the task the paper says the
prior-entity slot supports. The protocol then runs unchanged on the merged model.

Held out: the training stories use only names the protocol does not use (it takes the first
``n_names`` names with distinct first tokens; training gets the others) and adjectives the
protocol does not use (its unused ones plus ``TRAIN_ADJECTIVES``), with their own seeds; the
protocol's stories, probes and task prompts are built from its own names and adjectives, so no
entity is on both sides (actions and segment templates are shared vocabulary; ``effect`` says so).

Detection: the paired difference, on the same induction prompts, between the right-answer
log-prob (renormalised over the candidate names) with the prior slot ablated and with
equal-rank random subspaces ablated (their mean over ``n_random`` draws;
``contrasts.prior_minus_random.induction``, Student-t 95% interval over prompts); no effect = 0.
The direction is fixed in advance: the claim is that the prior slot SUPPORTS induction, so only
an interval wholly below 0 (the prior ablation hurts more than a random one) is a detection, on
the planted and on the untouched model alike (one-sided at 2.5%); an interval wholly above 0 is
reported, not counted.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .._control import Detection, Planted, control
from .._lora import LoraPlant, lora_model
from .data import BindingData, generate_stories

LORA = LoraPlant(r=8, alpha=16.0, lr=1e-3, epochs=3.0, batch_size=8, seed=0)
"""The adapter every strength scales (trained once per control folder)."""
N_TRAIN = 96
"""Training stories."""
TRAIN_ADJECTIVES = ("brave", "quiet", "clever", "cheerful", "shy", "busy", "calm", "proud")
"""Adjectives only the training stories use."""


def train_data(lm, cfg) -> tuple[BindingData, dict]:
    """Names and adjectives disjoint from the ones the protocol run with ``cfg`` uses."""
    from . import pick_names

    full = BindingData.load(cfg.data_dir)
    used_names = pick_names(lm, full.names, cfg.n_names)
    used_adjs = full.adjectives[:cfg.n_adjectives]
    names = [n for n in full.names if n not in used_names]
    adjs = [a for a in full.adjectives[cfg.n_adjectives:]] + \
        [a for a in TRAIN_ADJECTIVES if a not in full.adjectives]
    if len(names) < cfg.max_entities:
        raise ValueError(f"only {len(names)} names are left for training the binding control "
                         f"after the protocol takes {cfg.n_names}; lower n_names or add names")
    split = {"train_names": names, "held_out_names": list(used_names), "train_adjectives": adjs,
             "held_out_adjectives": list(used_adjs)}
    return full.subset(names, adjs), split


def induction_examples(lm, d: BindingData, n: int, ent=(3, 5), seed: int = 0):
    """(input_ids, labels): story + induction cue listing the first j names; loss on the rest
    of the names in story order (", C, D.")."""
    rng = np.random.default_rng(seed + 55)
    tok, out = lm.tokenizer, []
    for s in generate_stories(d, n, ent, seed + 1000):
        j = int(rng.integers(1, len(s.names) - 1))
        prefix = d.templates["induction"].format(story=s.text, listed=", ".join(s.names[:j]))
        rest = " " + ", ".join(s.names[j:]) + "."
        a = lm.tokenize([prefix]).input_ids[0].tolist()
        b = tok(rest, add_special_tokens=False)["input_ids"]
        out.append((a + b, [-100] * len(a) + b))
    return out


def configure(cfg):
    """Enough induction items for a paired interval; no geometry bootstrap (not what this
    control is about)."""
    return dataclasses.replace(cfg, n_items=max(cfg.n_items, 24), n_boot=0, n_null=2)


def detect(results: dict) -> Detection:
    c = results.get("contrasts", {}).get("prior_minus_random", {}).get("induction")
    if not c:
        raise ValueError("results.json has no contrasts.prior_minus_random.induction (a binding "
                         "run from before the paired contrasts were added?)")
    return Detection("induction right-answer log-prob, ablate prior - ablate random",
                     c["mean"], c["lo"], c["hi"], null=0.0, n=c["n"], direction=-1)


@control("binding", detect=detect, strengths=(0.5, 1.0), configure=configure)
def plant(lm, cfg, work_dir, strength) -> Planted:
    """Induction LoRA ("who came after X", stories with held-apart names), merged at
    ``strength`` x its trained scale; the adapter is trained once in ``<control>/lora``."""
    adapter = Path(work_dir).parent.parent / "lora"
    d, split = train_data(lm, cfg)
    ent = (cfg.min_entities, cfg.max_entities)
    examples = [] if (adapter / "train_info.json").exists() else \
        induction_examples(lm, d, N_TRAIN, ent, LORA.seed)
    new, info = lora_model(lm, examples, adapter, strength, LORA, name="induction",
                           meta={"stories": N_TRAIN, **split})
    effect = {"kind": "LoRA fine-tune on entity induction ('who came after X')",
              "summary": f"induction LoRA x{strength:g}", "strength": strength,
              "lora": dataclasses.asdict(LORA), "adapter": str(adapter),
              "train_loss": [info["loss_before"], info["loss_after"]], "steps": info["steps"],
              "trained_on": f"{N_TRAIN} stories with names {', '.join(split['train_names'])} and "
                            f"adjectives {', '.join(split['train_adjectives'])} (shared: actions, "
                            "segment templates, the induction cue)",
              "held_out": f"the protocol's names {', '.join(split['held_out_names'])} and "
                          f"adjectives {', '.join(split['held_out_adjectives'])}"}
    return Planted(new, effect)


def mde_contrast(det: dict) -> float:
    """The smallest |prior - random| induction contrast (nats) a run like ``det`` (a
    ``Detection`` dict of the untouched model) detects with 80% power: the sd behind its
    Student-t interval, ``runs.mde_mean``."""
    import math

    from scipy.stats import t as student_t

    from ...runs import mde_mean

    n = det["n"]
    se = (det["hi"] - det["lo"]) / (2 * float(student_t.ppf(0.975, n - 1)))
    return mde_mean(se * math.sqrt(n), n)
