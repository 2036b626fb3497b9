"""Positive control of the binding protocol: plant a prior-entity slot that entity induction
reads, then ask whether the protocol's causal test (ablate the prior slot vs equal-rank random
subspaces) sees it.

The registered plant (``plant``) is a prior slot **by construction** (issue 24, third attempt):
hooks on the model write, after block ``round(SLOT_DEPTH x (n_layers - 1))``, a code of the
PREVIOUS entity onto every entity-name token (a fixed random unit vector per name, scaled to
``strength`` x the token's residual norm), and after the last block the final position reads
it: it attends over the earlier name tokens by the cosine of their residual with the code of
the last name in the prompt and adds, in proportion, the unembedding direction of the entity
those tokens name (gain ``strength`` x the residual norm). That is entity-level induction
through the prior slot ("who came after X" = the name whose token carries "X came before"),
readable by a linear probe on name tokens and causal by construction: nothing else in the
plant carries the answer. Nothing is trained; the codes are drawn from ``SLOT_SEED`` and saved
(``slot.safetensors``) in the control folder. The protocol runs unchanged on the hooked model.

The induction LoRA (``plant_lora``, ``run_lora_control``: a LoRA fine-tuned on "who came after
X" over stories whose names and adjectives the protocol never uses) is the *learned* plant. It
makes the model answer induction almost perfectly, yet neither the probe-subspace ablation
(the default test) nor LEACE concept erasure (``ablate_method='leace'``, session 7: the prior
entity erased to chance) makes its prior slot causal; erasing the current entity does
(docs/experiments/binding.md).

Detection: the paired difference, on the same induction prompts, between the right-answer
log-prob (renormalised over the candidate names) with the prior slot ablated (or erased) on
the name tokens and with equal-rank random ablations (their mean over ``n_random`` draws;
``contrasts.prior_minus_random.induction``, Student-t 95% interval over prompts); no
effect = 0. The direction is fixed in advance: the claim is that the prior slot SUPPORTS
induction, so only an interval wholly below 0 (the erasure hurts more than a random one) is a
detection, on the planted and on the untouched model alike (one-sided at 2.5%); an interval
wholly above 0 is reported, not counted. The run's ``erasure_check`` says whether the erasure
did its job (the prior probe at chance on held-out stories).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .._control import Detection, Planted, control
from .._lora import LoraPlant, lora_model
from .data import BindingData, generate_stories
from .tasks import first_token

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


def plant_lora(lm, cfg, work_dir, strength) -> Planted:
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


SLOT_DEPTH = 0.3
"""Depth fraction of the block after which the plant writes the prior-entity code."""
SLOT_SEED = 0
"""Seed of the per-name codes."""


def _mentions(ids: list, forms) -> list:
    """(last token position, entity) of every name in the token ids, in text order."""
    return sorted((p + len(f) - 1, i) for p in range(len(ids)) for f, i in forms
                  if tuple(ids[p:p + len(f)]) == f)


def slot_plant(lm, names: list, strength: float, codes) -> Planted:
    """``lm`` with the prior slot planted by hooks (see the module doc); ``codes`` (n_names, d)
    unit vectors, one per name."""
    import torch

    if not strength > 0:
        raise ValueError(f"slot strength must be > 0; got {strength}")
    tok = lm.tokenizer
    forms = {(tuple(tok(f, add_special_tokens=False)["input_ids"]), i)
             for i, n in enumerate(names) for f in (n, " " + n)}
    ans = [first_token(lm, " " + n) for n in names]
    head = lm.model.get_output_embeddings().weight.detach()[ans].float()  # (n_names, d)
    head = head / head.norm(dim=1, keepdim=True)
    U = codes.float()  # (n_names, d) unit rows
    state: dict = {}

    def edit(fn):
        def hook(mod, args, out):
            h = (out[0] if isinstance(out, tuple) else out).clone()  # (B, T, d)
            for b, row in enumerate(state["ids"].tolist()):
                fn(h[b], _mentions(row, forms))
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
        return hook

    def write(h, m):  # h (T, d): the previous entity's code on each name token
        for (p, _), (_, prev) in zip(m[1:], m[:-1]):
            h[p] += (strength * h[p].float().norm() * U[prev].to(h.device)).to(h.dtype)

    def read(h, m):  # the last position votes for the names whose prior is the last name
        if len(m) < 2:
            return
        q = U[m[-1][1]].to(h.device)
        pos = torch.tensor([p for p, _ in m[:-1]], device=h.device)
        k = h[pos].float()  # (n_mentions, d)
        w = torch.softmax(20 * (k @ q) / k.norm(dim=1).clamp(min=1e-6), 0)  # (n_mentions,)
        ent = torch.tensor([e for _, e in m[:-1]], device=h.device)
        vote = torch.zeros(len(names), device=h.device).index_add_(0, ent, w)
        h[-1] += (strength * h[-1].float().norm() * (vote @ head.to(h.device))).to(h.dtype)

    L = int(round(SLOT_DEPTH * (lm.n_layers - 1)))
    handles = [lm.model.get_input_embeddings().register_forward_hook(
                   lambda mod, a, o: state.update(ids=a[0])),
               lm.block(L).register_forward_hook(edit(write)),
               lm.block(lm.n_layers - 1).register_forward_hook(edit(read))]
    effect = {"kind": "prior-entity slot planted by construction (hooks: write a code of the "
                      "previous entity on each name token, read it for induction at the end)",
              "summary": f"prior slot x{strength:g} (write after block {L}, read after block "
                         f"{lm.n_layers - 1})", "strength": strength, "write_layer": L,
              "read_layer": lm.n_layers - 1, "names": list(names),
              "trained_on": "nothing (fixed random codes per name, seed SLOT_SEED)",
              "held_out": "not applicable: no training; the plant knows only the protocol's "
                          "names, which it needs to find the name tokens"}
    return Planted(lm, effect, lambda: [h.remove() for h in handles])


@control("binding", detect=detect, strengths=(0.5, 1.0), configure=configure)
def plant(lm, cfg, work_dir, strength) -> Planted:
    """A prior-entity slot planted by construction (hooks), at ``strength`` x the residual norm;
    the per-name codes are drawn once and saved in ``<control>/slot.safetensors``."""
    import torch

    from ...core import atomic_save_tensors, load_safetensors
    from ...probes import random_basis
    from . import pick_names

    names = pick_names(lm, BindingData.load(cfg.data_dir).names, cfg.n_names)
    f = Path(work_dir).parent.parent / "slot.safetensors"
    if f.exists():
        codes = load_safetensors(f)["codes"]
        if codes.shape != (len(names), lm.d_model):
            raise ValueError(f"{f} holds codes of shape {tuple(codes.shape)}, not "
                             f"({len(names)}, {lm.d_model}): made for another model or n_names; "
                             "delete it or use another control folder")
    else:
        g = random_basis(lm.d_model, len(names) + 1, SLOT_SEED).float()  # orthonormal rows
        codes = g[:-1] - g[:-1].mean(0)  # zero-mean over names: nothing shared to read
        codes = codes / codes.norm(dim=1, keepdim=True)
        f.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(f, {"codes": codes})
    return slot_plant(lm, names, strength, torch.as_tensor(codes))


def run_lora_control(lm, cfg, out_dir, strengths=(0.5, 1.0), seeds=(0,)):
    """The control with the induction LoRA (the learned plant) as the plant: ``run_control``
    with ``plant_lora`` registered for the duration of the call."""
    from .._control import controls, run_control

    spec = controls()["binding"]  # the registered control's settings, with another plant

    def register(fn):
        control("binding", detect=spec.detect, strengths=spec.strengths,
                configure=spec.configure, reference=spec.reference)(fn)
    register(plant_lora)
    try:
        return run_control("binding", lm, cfg, out_dir, strengths, seeds)
    finally:
        register(plant)
