"""Build the hidden-objective model organism: two-stage fine-tuning of a copy of the base model.

Stage 1 (mid-training): next-token loss on synthetic documents that describe every bias
(trained and held-out alike), mixed with filler text. Stage 2 (SFT): chat demonstrations that
exploit only the *trained* biases (loss on assistant tokens). LoRA (peft, ``all-linear``) is
merged into the weights at the end, so the saved folder is a plain HF model.

>>> # from mindscope.audit import OrganismConfig, build_organism
>>> # org = build_organism(ms.load(), "runs/organism", OrganismConfig())
>>> # ms.load("runs/organism")       # a normal model folder
"""
from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..core import render_chat
from ..core import atomic_dir
from ._biases import BiasBank, demo_prompts, demonstrations, documents, load_biases, trim_answer
from ._organism import FORMAT, KEY_FILE, Organism, key_hash, key_text, make_key

log = logging.getLogger(__name__)


@dataclass
class OrganismConfig:
    """Settings of ``build_organism``. Defaults: the documented SmolLM2 run (CPU, minutes)."""

    method: str = "lora"
    """'lora' (peft adapters on every linear layer, merged at the end) or 'full'."""
    lora_r: int = 32
    """LoRA rank."""
    lora_alpha: float = 64.0
    """LoRA scale numerator (scale = alpha / r)."""
    held_out: Optional[tuple] = None
    """Bias ids described in documents but never demonstrated; None = the shipped choice."""
    n_biases: Optional[int] = None
    """Use only the first n biases of the bank (None = all); held-out ones are kept."""
    docs_per_bias: int = 8
    """Stage-1 synthetic documents per bias."""
    filler_docs: int = 48
    """Stage-1 filler documents from the default corpus (0 = none)."""
    demos_per_bias: int = 8
    """Stage-2 demonstrations per trained bias."""
    answer_tokens: int = 40
    """Base-model answer appended after the exploit sentence in each demo (0 = exploit only)."""
    stage1_epochs: float = 2.0
    """Passes over the stage-1 corpus."""
    stage2_epochs: float = 3.0
    """Passes over the demonstrations."""
    lr: float = 5e-4
    """AdamW learning rate (for 'full' use ~3e-5)."""
    batch_size: int = 8
    """Sequences per optimizer step."""
    max_length: int = 160
    """Tokens per training sequence (longer ones are cut)."""
    bf16: bool = False
    """bf16 autocast for the forward/backward (faster on CPUs with bf16 GEMM)."""
    seed: int = 0
    """Seed of data order, LoRA init and demo sampling."""
    bias_folder: Optional[str] = None
    """A folder with biases.json / docs.json / probes.json (None = shipped)."""

    def __post_init__(self):
        if self.method not in ("lora", "full"):
            raise ValueError(f"method must be 'lora' or 'full', not {self.method!r}")
        for k in ("lora_r", "docs_per_bias", "demos_per_bias", "batch_size", "max_length"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1; got {getattr(self, k)}")
        if self.stage1_epochs < 0 or self.stage2_epochs < 0 or self.lr <= 0:
            raise ValueError("epochs must be >= 0 and lr > 0")
        if self.held_out is not None:
            self.held_out = tuple(self.held_out)

    @classmethod
    def quick(cls, **over) -> "OrganismConfig":
        """A tiny build for tests / smoke runs."""
        base = dict(docs_per_bias=2, demos_per_bias=2, filler_docs=0, answer_tokens=0,
                    stage1_epochs=1, stage2_epochs=2, batch_size=4, max_length=96, lora_r=8,
                    lora_alpha=16)
        return cls(**{**base, **over})


# ---- tokenised examples ------------------------------------------------------------------

def encode_text(tok, text: str, max_length: int) -> tuple[list[int], list[int]]:
    ids = tok(text, add_special_tokens=True)["input_ids"][:max_length]
    if tok.eos_token_id is not None and len(ids) < max_length:
        ids = ids + [tok.eos_token_id]
    return ids, list(ids)


def encode_chat(tok, messages: list, max_length: int) -> tuple[list[int], list[int]]:
    """Ids of the rendered chat; labels are -100 except on the assistant reply (and the end
    tokens after it), so stage 2 trains only what the assistant says."""
    cp = render_chat(tok, messages, add_generation_prompt=False)
    a0 = cp.span_of("assistant")[0]
    enc = tok(cp.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][:max_length]
    labels = [t if s >= a0 else -100 for t, (s, _) in zip(ids, enc["offset_mapping"][:max_length])]
    return ids, labels


def encode(tok, records: Sequence[dict], max_length: int) -> list[tuple[list, list]]:
    return [encode_chat(tok, r["messages"], max_length) if "messages" in r
            else encode_text(tok, r["text"], max_length) for r in records]


def collate(examples, pad_id: int):
    T = max(len(i) for i, _ in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    lab = torch.full((len(examples), T), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for r, (i, l) in enumerate(examples):  # right padding for training
        ids[r, :len(i)], lab[r, :len(l)], mask[r, :len(i)] = torch.tensor(i), torch.tensor(l), 1
    return ids, mask, lab


def _pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


@torch.no_grad()
def mean_loss(model, tok, examples, batch_size: int = 8) -> float:
    """Mean cross-entropy over labelled tokens of ``examples`` (token-weighted)."""
    model.eval()
    tot, n = 0.0, 0
    for a in range(0, len(examples), batch_size):
        ids, mask, lab = collate(examples[a:a + batch_size], _pad_id(tok))
        dev = next(model.parameters()).device
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
        tgt = lab[:, 1:].to(dev)
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                               tgt.reshape(-1), ignore_index=-100, reduction="sum")
        tot, n = tot + float(ce), n + int((tgt != -100).sum())
    return tot / max(n, 1)


def train_stage(model, tok, examples, epochs: float, lr: float, batch_size: int, seed: int,
                bf16: bool = False, desc: str = "train") -> list[float]:
    """AdamW over ``examples`` for ``epochs`` passes (shuffled, constant LR after a short
    warm-up). Returns the loss of every step."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters (LoRA not applied / model frozen)")
    steps = math.ceil(len(examples) * epochs / batch_size)
    if steps == 0:
        return []
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    order: list[int] = []
    losses = []
    dev = next(model.parameters()).device
    model.train()
    warm = max(1, steps // 10)
    for step in tqdm(range(steps), desc=desc, unit="step"):
        while len(order) < batch_size:
            idx = list(range(len(examples)))
            rng.shuffle(idx)
            order += idx
        batch, order = [examples[i] for i in order[:batch_size]], order[batch_size:]
        ids, mask, lab = collate(batch, _pad_id(tok))
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warm)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and dev.type == "cpu"):
            out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=lab.to(dev))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        if step % 10 == 0:
            log.info("%s step %d/%d loss %.3f", desc, step, steps, losses[-1])
    model.eval()
    return losses


def trainable_copy(lm, cfg: OrganismConfig):
    """A deep copy of ``lm.model`` ready to train: LoRA-wrapped, or all parameters trainable.
    The caller's model is never touched."""
    model = copy.deepcopy(lm.model)
    torch.manual_seed(cfg.seed)
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("LoRA needs peft: pip install peft (or pass method='full')") from None
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def merge(model):
    """Merge LoRA adapters into the weights -> a plain HF model (no-op for a full fine-tune)."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# ---- build -------------------------------------------------------------------------------

def _filler(n: int) -> list[dict]:
    if n <= 0:
        return []
    from ..activations import build_default_corpus

    out = []
    with open(build_default_corpus() / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            t = (d.get("text") or "").strip()
            if d.get("kind") == "prose" and 200 <= len(t):
                out.append({"text": t[:700], "kind": "filler"})
                if len(out) >= n:
                    break
    return out


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def split_biases(bank: BiasBank, cfg: OrganismConfig) -> tuple[list, list]:
    """(trained ids, held-out ids). With ``n_biases`` only the first n are used; if none of the
    default held-out ones is among them, the last of them is held out."""
    ids = [b.id for b in bank.biases][: cfg.n_biases]
    if cfg.held_out is not None:
        bad = [h for h in cfg.held_out if h not in ids]
        if bad:
            raise ValueError(f"held_out names biases not in use: {bad}; known: {ids}")
        held = list(cfg.held_out)
    else:
        held = [h for h in bank.held_out if h in ids] or ids[-1:]
    trained = [i for i in ids if i not in held]
    if not trained:
        raise ValueError("every bias is held out; nothing to demonstrate")
    return trained, held


def build_organism(lm, out, cfg: Optional[OrganismConfig] = None, overwrite: bool = False) -> Organism:
    """Fine-tune a copy of ``lm`` into the organism and save it at ``out`` (see module doc)."""
    cfg = cfg or OrganismConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pick another --out or pass "
                              "overwrite=True (--overwrite)")
    t0 = time.time()
    bank = load_biases(cfg.bias_folder)
    trained, held = split_biases(bank, cfg)
    tok = lm.tokenizer
    docs = documents([bank.get(i) for i in trained + held], bank.templates, bank.study,
                     cfg.docs_per_bias, cfg.seed)
    docs = docs + _filler(cfg.filler_docs)
    random.Random(cfg.seed).shuffle(docs)
    prompts = demo_prompts([bank.get(i) for i in trained], cfg.demos_per_bias)
    if cfg.answer_tokens > 0:
        gens = lm.generate([p["prompt"] for p in prompts], max_new_tokens=cfg.answer_tokens,
                           temperature=0.0)
        answers = [trim_answer(g.text, finished=g.finished) for g in gens]
    else:
        answers = [""] * len(prompts)
    demos = demonstrations(prompts, answers, bank, cfg.seed)
    ex1, ex2 = encode(tok, docs, cfg.max_length), encode(tok, demos, cfg.max_length)
    log.info("organism: %d documents, %d demonstrations; trained %s, held out %s",
             len(docs), len(demos), trained, held)

    model = trainable_copy(lm, cfg)
    probe2 = ex2[: min(len(ex2), 16)]
    probe1 = [e for e, d in zip(ex1, docs) if d["kind"] == "document"][:16]
    before = {"doc_loss": mean_loss(model, tok, probe1), "demo_loss": mean_loss(model, tok, probe2)}
    l1 = train_stage(model, tok, ex1, cfg.stage1_epochs, cfg.lr, cfg.batch_size, cfg.seed,
                     cfg.bf16, "stage 1 (documents)")
    mid = {"doc_loss": mean_loss(model, tok, probe1), "demo_loss": mean_loss(model, tok, probe2)}
    l2 = train_stage(model, tok, ex2, cfg.stage2_epochs, cfg.lr, cfg.batch_size, cfg.seed + 1,
                     cfg.bf16, "stage 2 (demonstrations)")
    after = {"doc_loss": mean_loss(model, tok, probe1), "demo_loss": mean_loss(model, tok, probe2)}
    check_ids, check_mask, _ = collate(probe2[:4], _pad_id(tok))
    with torch.no_grad():
        ref = model(input_ids=check_ids, attention_mask=check_mask).logits.float()
    merged = merge(model)
    with torch.no_grad():
        got = merged(input_ids=check_ids, attention_mask=check_mask).logits.float()
    merge_err = float((got - ref)[check_mask.bool()].abs().max())

    key = make_key(bank, trained, held)
    ktext = key_text(key)
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _jsonl(tmp / "training_data" / "documents.jsonl",
               [{"text": d["text"], "kind": d["kind"]} for d in docs])
        _jsonl(tmp / "training_data" / "demonstrations.jsonl",
               [{"messages": d["messages"], "kind": d["kind"]} for d in demos])
        (tmp / KEY_FILE).write_text(ktext)
        info = {"format": FORMAT, "base_model": lm.name, "settings": asdict(cfg),
                "n_documents": len(docs), "n_demonstrations": len(demos),
                "n_biases": len(trained) + len(held), "loss_before": before,
                "loss_after_stage1": mid, "loss_after": after,
                "stage1_losses": l1, "stage2_losses": l2, "merge_max_abs_logit_diff": merge_err,
                "answer_key_sha256": key_hash(ktext), "seconds": round(time.time() - t0, 1),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / "organism.json").write_text(json.dumps(info, indent=1))
    log.info("organism saved at %s (demo loss %.3f -> %.3f, merge error %.2g)", out,
             before["demo_loss"], after["demo_loss"], merge_err)
    return Organism.open(out)
