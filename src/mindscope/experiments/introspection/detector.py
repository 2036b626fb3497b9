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
    """(reply with an injection, reply without); ``{concept}`` in the first is filled with the
    injected training concept's word (the naming plant, ``naming.py``)."""
    seed: int = 0
    """LoRA init and concept order."""
    extra_words: int = 0
    """Also train on up to this many shipped baseline words that the run's baseline does not
    use (``extra_training_words``), as more training concepts (the naming plant: 25 concept
    words alone teach a 25-way classifier)."""


def _lora_config(lm, spec: DetectorLoRA, inj: int):
    from peft import LoraConfig

    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.0,
                      target_modules=list(spec.targets),
                      layers_to_transform=list(range(inj + 1, lm.n_layers)))


def names_concept(spec: DetectorLoRA) -> bool:
    """The plant's injected reply names the concept (a ``{concept}`` field)."""
    return "{concept}" in spec.replies[0]


def _save_checkpoint(path: Path, key: str, step: int, named: dict, opt, g, hist) -> None:
    """LoRA parameters, Adam state and the concept-order generator after ``step`` steps."""
    t = {"rng": g.get_state()}
    for n, p in named.items():
        t[f"param.{n}"] = p.detach().cpu().clone()
        for k, v in opt.state.get(p, {}).items():
            t[f"opt.{k}.{n}"] = v.detach().cpu().clone().reshape(v.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(path, t, metadata={"key": key, "step": str(step),
                                           "history": json.dumps(hist)})


def _load_checkpoint(path: Path, key: str, named: dict, opt, g) -> tuple[int, list]:
    """Restore a ``_save_checkpoint`` with settings hash ``key``: (steps done, history); (0, [])
    when there is none or it was saved for other settings."""
    if path is None or not path.exists() or _meta(path).get("key") != key:
        return 0, []
    t, m = load_safetensors(path, "LoRA training checkpoint"), _meta(path)
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(t[f"param.{n}"])
            st = {k.split(".", 2)[1]: v.to(p.device) for k, v in t.items()
                  if k.startswith("opt.") and k.split(".", 2)[2] == n}
            if st:
                opt.state[p] = st
    g.set_state(t["rng"])
    log.info("introspection control: resuming LoRA training at step %s from %s", m["step"], path)
    return int(m["step"]), json.loads(m["history"])


def train_detector_lora(lm, cfg, V: torch.Tensor, inj: int, spec: DetectorLoRA,
                        names=None, checkpoint=None, key: str = "", save_every: int = 10
                        ) -> tuple[dict, list]:
    """Train the LoRA on a copy of ``lm.model``: rows of ``V`` (training concepts, (n, d)) are
    injected at ``resid_post.inj`` x ``cfg.mech_strength``; ``names`` (n words) fill the
    injected reply's ``{concept}`` field, row by row. With ``checkpoint`` (a path), the state is
    saved there every ``save_every`` steps under settings hash ``key``, and a killed training
    resumes from it (same result as an unbroken one). Returns ({module: (A (r, in),
    B (out, r))}, loss history)."""
    from peft import get_peft_model

    from ...core import LM

    if "{concept}" in spec.replies[1]:
        raise ValueError("the control reply (spec.replies[1]) must not name the concept")
    if names_concept(spec) and (names is None or len(names) != V.shape[0]):
        raise ValueError(f"the injected reply {spec.replies[0]!r} names the concept: give one "
                         f"name per row of V ({V.shape[0]})")
    torch.manual_seed(spec.seed)
    model = get_peft_model(copy.deepcopy(lm.model), _lora_config(lm, spec, inj))
    tmp = LM(model.base_model.model, lm.tokenizer, lm.name)  # LoRA layers live in this copy
    named = {n: p for n, p in model.named_parameters() if "lora_" in n}
    for p in named.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(named.values()), lr=spec.lr)
    g = torch.Generator().manual_seed(spec.seed)
    k = min(spec.batch, V.shape[0])
    wordings = list(cfg.trial_prompts)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    start, hist = _load_checkpoint(ckpt, key, named, opt, g)
    for step in tqdm(range(start, spec.steps), desc="train detector LoRA",
                     disable=not cfg.progress, initial=start, total=spec.steps):
        w = wordings[step % len(wordings)]
        pick = torch.randperm(V.shape[0], generator=g)[:k]
        yes = ([spec.replies[0].format(concept=names[int(i)]) for i in pick]
               if names_concept(spec) else spec.replies[0])
        losses = pair_losses(tmp, cfg, w, V[pick], inj, (yes, spec.replies[1]), k)
        with torch.enable_grad():
            loss = (losses[0] + losses[1]) / 2
            opt.zero_grad()
            loss.backward()
        opt.step()
        hist.append({"step": step, "loss": float(loss.detach()), "wording": w,
                     "loss_injected": float(losses[0].detach()),
                     "loss_control": float(losses[1].detach())})
        if ckpt is not None and (step + 1) % save_every == 0 and step + 1 < spec.steps:
            _save_checkpoint(ckpt, key, step + 1, named, opt, g, hist)
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


def extra_training_words(cfg, avoid, n: int) -> list[str]:
    """Up to ``n`` shipped baseline words the run does not use as its baseline (``cfg.words()``
    takes the first ``n_baseline``) and that match no word of ``avoid`` (the held-out and the
    training concepts; ``word_matches``: plural, shared prefix), in shipped order. Their vectors
    are computed with the run's baseline, as the protocol computes the concepts'."""
    from .grade import load_words, word_matches

    _, b0 = load_words()
    _, base = cfg.words()
    used = {w.lower() for w in base}
    out = [w for w in b0 if w.lower() not in used
           and not any(word_matches(w, h) or word_matches(h, w) for h in avoid)]
    return out[:n]


def _settings(cfg, lm, train, inj, spec) -> dict:
    st = {"model": lm.name, "plant": "detector-lora", "train_concepts": train,
          "inj_layer": inj, "wordings": list(cfg.trial_prompts),
          "strength": float(cfg.mech_strength), "trial": cfg.trial,
          "n_baseline": cfg.n_baseline, **dataclasses.asdict(spec)}
    if not spec.extra_words:
        st.pop("extra_words")  # the settings hash of adapters saved before the field existed
    return st


@control("introspection", detect=lambda r: detect_detection(r), strengths=(0.5, 1.0),
         configure=lambda cfg: configure_detection(cfg))
def plant_detector(lm, cfg, work_dir, strength, spec: DetectorLoRA = DetectorLoRA()) -> Planted:
    """The detector LoRA trained on half the concepts, merged at ``strength`` x its scale into a
    copy of the model; reused from ``work_dir/detector_lora.safetensors`` when settings match
    (``naming_lora.safetensors`` for a ``spec`` whose injected reply names the concept)."""
    train, held = bias_split(cfg)
    if spec.extra_words:
        train = train + extra_training_words(cfg, held + train, spec.extra_words)
    inj = resolve_layers(lm, [cfg.mech_layer])[0]
    if inj + 1 >= lm.n_layers:
        raise ValueError(f"the detector LoRA needs blocks after the injection layer {inj}; "
                         f"give a smaller mech_layer (the model has {lm.n_layers} blocks)")
    st = _settings(cfg, lm, train, inj, spec)
    key = hashlib.sha256(json.dumps(st, sort_keys=True).encode()).hexdigest()[:12]
    kind = "naming LoRA" if names_concept(spec) else "detector LoRA"
    path = Path(work_dir) / f"{kind.split()[0]}_lora.safetensors"
    found = _find_saved(path, key)
    if found is not None:
        t = load_safetensors(found, kind)
        if found != path:  # trained for another strength of this control: only its scale differs
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_tensors(path, t, metadata=_meta(found))
        ab = {k[:-len(".lora_A")]: (t[k], t[k[:-1] + "B"]) for k in t if k.endswith(".lora_A")}
        hist = json.loads(_meta(path).get("history", "null"))
        log.info("introspection control: reusing the %s in %s", kind, found)
    else:
        _, base = cfg.words()
        vecs = concept_sets(lm, train, [inj], base, cfg.batch_size)
        ckpt = path.with_name(path.stem + ".checkpoint.safetensors")
        ab, hist = train_detector_lora(lm, cfg, vecs[inj].data.float(), inj, spec, names=train,
                                       checkpoint=ckpt, key=key)
        tensors = {}
        for name, (A, B) in ab.items():
            tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = A, B
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(path, tensors, metadata={
            "key": key, "settings": json.dumps(st), "history": json.dumps(hist),
            "scale": str(spec.alpha / spec.rank)})
        ckpt.unlink(missing_ok=True)  # the finished adapter replaces the training state
    scale = spec.alpha / spec.rank
    new = merged_copy(lm, ab, strength * scale)
    n_extra = len(train) - len(bias_split(cfg)[0])
    extra = f" ({n_extra} of them unused baseline nouns)" if n_extra else ""
    effect = {"kind": kind, "modules": sorted(ab), "rank": spec.rank,
              "alpha": spec.alpha, "strength": strength, "train_concepts": train,
              "held_out_concepts": held, "injection_layer": inj,
              "injection_strength": float(cfg.mech_strength), "steps": spec.steps,
              "lr": spec.lr, "trained_on": f"replies {spec.replies[0]!r} (injected) / "
                                           f"{spec.replies[1]!r} (control), wordings "
                                           f"{list(cfg.trial_prompts)}",
              "final_loss": hist[-1]["loss"] if hist else None,
              "summary": f"{kind} r{spec.rank} on {'/'.join(spec.targets)} of blocks "
                         f"{inj + 1}-{lm.n_layers - 1} x{strength:g}, trained on {len(train)} "
                         f"concepts{extra}, tested on {len(held)} others"}
    return Planted(new, effect, None)
