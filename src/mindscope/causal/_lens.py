"""Logit lens and tuned lens: read every layer's residual stream as if it were the last.

The logit lens applies the model's final norm + unembedding to ``resid_post.L``; the tuned lens
(Belrose et al., 2023, arXiv:2303.08112) first maps ``h`` through a learned per-layer affine
*translator* ``h + A_L h + b_L`` (initialised to the identity) trained to minimise
``KL(final logits || lens logits)`` on a corpus. The last layer needs no translator: its lens
is the model's own output.

>>> # res = logit_lens(lm, ["The capital of France is"], target=" Paris", positions="last")
>>> # res.target_rank[:, 0]          # rank of ' Paris' after every layer (0 = top)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..core import BadInputError, load_safetensors, need_int, read_json, safetensors_header
from ._common import Token, lens_logits, save_files, token_id

log = logging.getLogger(__name__)
_FIX = "the folder is damaged or incomplete: save the tuned lens again (TunedLens.save)"


class TunedLens(torch.nn.Module):
    """One affine translator per layer but the last: ``h -> h + h @ A_L^T + b_L``."""

    def __init__(self, n_layers: int, d_model: int, model: str = ""):
        super().__init__()
        self.n_layers, self.d_model, self.model = n_layers, d_model, model
        self.translators = torch.nn.ModuleList(torch.nn.Linear(d_model, d_model)
                                               for _ in range(n_layers - 1))
        for t in self.translators:  # identity start: the tuned lens begins as the logit lens
            torch.nn.init.zeros_(t.weight)
            torch.nn.init.zeros_(t.bias)
        self.info: dict = {}

    def forward(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """h (..., d) at resid_post.layer -> translated (..., d)."""
        if layer == self.n_layers - 1:
            return h
        t = self.translators[layer]
        return h + t(h.to(t.weight.dtype))

    def save(self, folder) -> Path:
        """Write ``tuned_lens.safetensors`` + ``tuned_lens.json`` into ``folder`` (atomically)."""
        meta = {"format": "mindscope.tuned_lens/1", "n_layers": self.n_layers,
                "d_model": self.d_model, "model": self.model, **self.info}
        return save_files(folder, {"tuned_lens.safetensors": self.state_dict(),
                                   "tuned_lens.json": meta})

    @classmethod
    def load(cls, folder, lm=None) -> "TunedLens":
        folder = Path(folder)
        meta_p, w_p = folder / "tuned_lens.json", folder / "tuned_lens.safetensors"
        if not meta_p.is_file() or not w_p.is_file():
            raise FileNotFoundError(f"{folder} is not a tuned-lens folder: expected "
                                    "tuned_lens.json + tuned_lens.safetensors (TunedLens.save)")
        meta = read_json(meta_p, expect=dict, what="tuned-lens config", fix=_FIX)
        n_layers = need_int(meta, "n_layers", meta_p, 1, 1 << 16)
        d_model = need_int(meta, "d_model", meta_p, 1, 1 << 20)
        if lm is not None and (n_layers, d_model) != (lm.n_layers, lm.d_model):
            raise ValueError(f"tuned lens in {folder} is for {n_layers} layers x d "
                             f"{d_model} ({meta.get('model')}); {lm.name} has "
                             f"{lm.n_layers} x {lm.d_model}")
        # the weights must be the translators the config describes (checked before allocating)
        want = {f"translators.{i}.{k}": [d_model] * (2 if k == "weight" else 1)
                for i in range(n_layers - 1) for k in ("weight", "bias")}
        header, _ = safetensors_header(w_p, "tuned-lens weights", _FIX)
        got = {k: shape for k, (_, shape) in header.items()}
        if got != want:
            bad = sorted(set(got) ^ set(want)) or sorted(k for k in want if got[k] != want[k])
            raise BadInputError(w_p, f"does not hold the {n_layers - 1} translators of "
                                     f"{d_model} x {d_model} that tuned_lens.json describes "
                                     f"(first differences: {bad[:3]})", _FIX)
        model = meta.get("model")
        lens = cls(n_layers, d_model, model if isinstance(model, str) else "")
        lens.load_state_dict(load_safetensors(w_p, "tuned-lens weights", _FIX))
        lens.info = {k: v for k, v in meta.items()
                     if k not in ("format", "n_layers", "d_model", "model")}
        return lens


def _resid_all(lm, prompts, positions, chat, batch_size):
    sites = [f"resid_post.{i}" for i in range(lm.n_layers)]
    cap = lm.capture(prompts, sites=sites, positions=positions, chat=chat, batch_size=batch_size,
                     dtype=torch.float32)
    return cap, torch.stack([cap[s] for s in sites])  # (L, N, d)


@dataclass
class LensResult:
    """Per layer and captured token: top tokens and a target token's rank and probability."""

    top_ids: torch.Tensor
    """(L, N, k) top-k token ids of each layer's lens distribution."""
    top_probs: torch.Tensor
    """(L, N, k) their probabilities."""
    target_ids: torch.Tensor
    """(N,) the target token per row (the model's final top-1 when no target was given)."""
    target_rank: torch.Tensor
    """(L, N) rank of the target (0 = most likely)."""
    target_prob: torch.Tensor
    """(L, N) probability of the target."""
    kl_to_final: torch.Tensor
    """(L, N) KL(final || lens) in nats; 0 at the last layer."""
    row: torch.Tensor
    """(N,) batch row of each captured token."""
    pos: torch.Tensor
    """(N,) position in its unpadded row."""
    tokens: list[str]
    """(N,) the input token at each captured position."""
    tuned: bool = False

    def table(self, tokenizer, n: int = -1) -> list[dict]:
        """Rows for captured token ``n``: layer, top tokens, target rank/prob."""
        return [{"layer": L, "top": [tokenizer.decode([int(t)]) for t in self.top_ids[L, n]],
                 "top_probs": [round(float(p), 4) for p in self.top_probs[L, n]],
                 "target": tokenizer.decode([int(self.target_ids[n])]),
                 "target_rank": int(self.target_rank[L, n]),
                 "target_prob": float(self.target_prob[L, n]),
                 "kl_to_final": float(self.kl_to_final[L, n])}
                for L in range(self.top_ids.shape[0])]


@torch.no_grad()
def logit_lens(lm, prompts, target: Optional[Token] = None, positions="all", k: int = 5,
               lens: Optional[TunedLens] = None, chat: bool = False,
               batch_size: int = 8) -> LensResult:
    """The logit lens (or ``lens=`` a tuned lens) at every layer for the tokens at ``positions``.

    ``target``: a single-token string or id tracked at every position; by default the model's own
    final top-1 prediction at each position."""
    cap, H = _resid_all(lm, prompts, positions, chat, batch_size)  # (L, N, d)
    L, N = H.shape[:2]
    final = torch.log_softmax(lens_logits(lm, H[-1]).cpu(), -1)  # (N, V)
    tgt = (final.argmax(-1) if target is None
           else torch.full((N,), token_id(lm, target), dtype=torch.long))
    top_i, top_p, rank, prob, kl = [], [], [], [], []
    for i in tqdm(range(L), desc="lens", disable=L * N < 4096):
        h = H[i] if lens is None else lens(H[i].to(next(lens.parameters()).device), i)
        lp = torch.log_softmax(lens_logits(lm, h).cpu(), -1)  # (N, V)
        p, ids = lp.topk(k, -1)
        top_i.append(ids)
        top_p.append(p.exp())
        t = lp.gather(1, tgt[:, None])  # (N, 1)
        rank.append((lp > t).sum(-1))
        prob.append(t.squeeze(1).exp())
        kl.append((final.exp() * (final - lp)).sum(-1).clamp(min=0))
    toks = [lm.tokenizer.decode([int(t)]) for t in cap.token_ids]
    return LensResult(torch.stack(top_i), torch.stack(top_p), tgt, torch.stack(rank),
                      torch.stack(prob), torch.stack(kl), cap.row, cap.pos, toks, lens is not None)


def train_tuned_lens(lm, texts: Sequence[str], steps: int = 250, lr: float = 1e-3,
                     batch_tokens: int = 256, max_length: int = 128, skip_first: int = 1,
                     seed: int = 0, lens: Optional[TunedLens] = None) -> TunedLens:
    """Train per-layer translators on ``texts``: minimise the sum over layers of
    KL(final logits || lens logits), Adam with ``lr``, ``batch_tokens`` random tokens a step.

    ``skip_first`` drops each text's first tokens (attention-sink positions whose residual norm
    dwarfs the rest would dominate the loss). Logs the mean KL before and after training."""
    if steps < 1 or batch_tokens < 1:
        raise ValueError("steps and batch_tokens must be >= 1")
    texts = list(texts)
    if not texts:
        raise ValueError("train_tuned_lens needs a non-empty corpus")
    cap, H = _resid_all(lm, lm.tokenize(texts, max_length=max_length), "all", False, 8)
    keep = cap.pos >= skip_first
    H = H[:, keep]  # (L, N, d)
    if H.shape[1] == 0:
        raise ValueError(f"no tokens left after skipping the first {skip_first} of each text")
    lens = lens or TunedLens(lm.n_layers, lm.d_model, lm.name)
    lens.to(lm.device)
    opt = torch.optim.Adam(lens.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    L, N = H.shape[:2]

    def loss_on(idx):
        with torch.no_grad():
            target = torch.log_softmax(lens_logits(lm, H[-1, idx]), -1)  # (n, V)
        total = 0.0
        for i in range(L - 1):
            lp = torch.log_softmax(lens_logits(lm, lens(H[i, idx].to(lm.device), i)), -1)
            total = total + (target.exp() * (target - lp)).sum(-1).mean()
        return total / max(L - 1, 1)

    eval_idx = torch.randperm(N, generator=g)[:batch_tokens]
    with torch.no_grad():
        before = float(loss_on(eval_idx))
    for step in tqdm(range(steps), desc="tuned lens", unit="step"):
        idx = torch.randint(0, N, (min(batch_tokens, N),), generator=g)
        with torch.enable_grad():
            loss = loss_on(idx)
            opt.zero_grad()
            loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(loss_on(eval_idx))
    log.info("tuned lens: mean KL to final %.4f -> %.4f nats over %d tokens", before, after, N)
    lens.info.update(steps=steps, lr=lr, tokens=N, kl_before=before, kl_after=after)
    return lens
