"""Tokenize a corpus and pack it into fixed-length windows (no padding, every row full).

BOS handling (``bos``):

- ``"window"`` (default): every window is ``[BOS] + the next length-1 tokens of the stream``;
  the stream is the documents' tokens joined by a separator (EOS, else BOS). Every row the
  model sees starts with BOS, as in its training; windows may start mid-document.
- ``"document"``: the stream is ``BOS doc0 BOS doc1 ...`` cut into plain chunks.
- ``"none"``: the stream is ``doc0 SEP doc1 SEP ...`` cut into plain chunks.

Tokens are taken with ``add_special_tokens=False``; chats are rendered with the model's chat
template first. BOS is ``tokenizer.bos_token_id``, else EOS. Inserted BOS/separator tokens
belong to no document (``doc = -1``).

Rows kept for storage (``keep``): position >= ``skip_positions`` (default 2: at SmolLM2's
resid_post.15 position 0 has norm ~25,000 and position 1 sometimes 3,000-25,000, against ~175
for other tokens) and, with ``skip_tokens``, not a BOS/separator (``"bos"``) or not any
special token (``"special"``, the default).

>>> # for w in iter_windows(corpus, tok, WindowConfig(length=128)): w.index, w.ids.shape  # (128,)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from ..core import BadInputError
from ._corpus import Corpus

log = logging.getLogger(__name__)

ROLES = ("", "system", "user", "assistant", "template")
"""Token role codes: '' plain text; a chat turn's role; 'template' for chat scaffolding."""


@dataclass
class WindowConfig:
    """How documents become model inputs, and which rows are stored."""

    length: int = 128
    """Tokens per window (the context of every row)."""
    bos: str = "window"
    """'window' (BOS starts every window), 'document' (BOS before every document) or 'none'."""
    skip_positions: int = 2
    """Rows at window positions < this are not stored. Position 0 always has an outlier norm
    (~25,000 vs ~175 at SmolLM2's resid_post.15) and position 1 sometimes (3,000-25,000)."""
    skip_tokens: str = "special"
    """Rows not stored by token: 'none', 'bos' (BOS/separator tokens) or 'special' (all
    special tokens of the tokenizer, added special tokens such as chat markers included)."""

    def __post_init__(self):
        if self.length < 2:
            raise ValueError(f"window length must be >= 2, got {self.length}")
        if self.bos not in ("window", "document", "none"):
            raise ValueError(f"bos must be 'window', 'document' or 'none', not {self.bos!r}")
        if self.skip_tokens not in ("none", "bos", "special"):
            raise ValueError(f"skip_tokens must be 'none', 'bos' or 'special', not "
                             f"{self.skip_tokens!r}")
        if not 0 <= self.skip_positions < self.length:
            raise ValueError(f"skip_positions must be in [0, length); got {self.skip_positions}")


@dataclass
class Window:
    index: int
    ids: np.ndarray  # (L,) int64 token ids
    doc: np.ndarray  # (L,) int64 document id (-1: inserted BOS/separator)
    role: np.ndarray  # (L,) int8 codes into ROLES


def special_ids(tokenizer) -> tuple[int, int]:
    """(bos, separator) token ids."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    if bos is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token; use bos='none'")
    return int(bos), int(sep)


def keep_mask(ids: np.ndarray, cfg: WindowConfig, tokenizer) -> np.ndarray:
    """(…, L) bool: which rows are stored."""
    keep = np.ones(ids.shape, dtype=bool)
    keep[..., :cfg.skip_positions] = False
    if cfg.skip_tokens != "none":
        skip = set(special_ids(tokenizer))
        if cfg.skip_tokens == "special":
            skip |= set(int(i) for i in tokenizer.all_special_ids)
            added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
            skip |= {int(i) for i, t in added.items() if getattr(t, "special", False)}
        keep &= ~np.isin(ids, np.array(sorted(skip)))
    return keep


def encode_docs(docs, tokenizer) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, role codes) per document."""
    from ..core import render_chat

    out: list = [None] * len(docs)
    plain = [i for i, d in enumerate(docs) if d.text is not None]
    if plain:
        enc = tokenizer([docs[i].text for i in plain], add_special_tokens=False)["input_ids"]
        for i, ids in zip(plain, enc):
            out[i] = (np.asarray(ids, dtype=np.int64), np.zeros(len(ids), dtype=np.int8))
    for i, d in enumerate(docs):
        if d.messages is None:
            continue
        p = render_chat(tokenizer, d.messages, add_generation_prompt=d.add_generation_prompt)
        enc = tokenizer(p.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        starts = np.asarray([o[0] for o in enc["offset_mapping"]], dtype=np.int64)
        role = np.full(len(ids), ROLES.index("template"), dtype=np.int8)
        for r, a, b in p.spans:
            code = ROLES.index(r) if r in ROLES else ROLES.index("template")
            role[(starts >= a) & (starts < b)] = code
        out[i] = (ids, role)
    return out


def iter_windows(corpus: Corpus, tokenizer, cfg: WindowConfig, n_windows: Optional[int] = None,
                 want=None, docs_per_call: int = 64, encode=None) -> Iterator[Window]:
    """Windows 0, 1, 2, ... of the packed corpus (stops after ``n_windows`` or at the corpus'
    end; a last partial window is dropped, with a warning naming its size; a corpus shorter
    than one window is refused with the fix). ``want(index) -> bool`` skips building arrays for
    windows the caller does not need (the stream is still read, so indices stay global).
    ``encode(docs) -> [(ids, roles)]`` replaces the tokenizer call (``RankEncoder``: each
    data-parallel rank tokenizes only its share of the documents)."""
    encode = encode or (lambda chunk: encode_docs(chunk, tokenizer))
    bos, sep = special_ids(tokenizer)
    L = cfg.length
    body = L - 1 if cfg.bos == "window" else L
    ids_buf, doc_buf, role_buf = [], [], []
    buffered, index = 0, 0
    docs = iter(corpus)

    def flush_ready():
        nonlocal ids_buf, doc_buf, role_buf, buffered, index
        if buffered < body:
            return []
        ids, doc, role = (np.concatenate(b) for b in (ids_buf, doc_buf, role_buf))
        out, a = [], 0
        while buffered - a >= body and (n_windows is None or index < n_windows):
            if want is None or want(index):
                sl = slice(a, a + body)
                w_ids, w_doc, w_role = ids[sl], doc[sl], role[sl]
                if cfg.bos == "window":
                    w_ids = np.concatenate([[bos], w_ids])
                    w_doc = np.concatenate([[-1], w_doc])
                    w_role = np.concatenate([np.zeros(1, np.int8), w_role])
                out.append(Window(index, w_ids, w_doc, w_role))
            a += body
            index += 1
        ids_buf, doc_buf, role_buf = [ids[a:]], [doc[a:]], [role[a:]]
        buffered -= a
        return out

    def push(ids, doc, role):
        nonlocal buffered
        ids_buf.append(ids), doc_buf.append(doc), role_buf.append(role)
        buffered += len(ids)

    marker = (np.array([-1]), np.zeros(1, np.int8))
    while n_windows is None or index < n_windows:
        chunk = [d for _, d in zip(range(docs_per_call), docs)]
        if not chunk:
            break
        for d, (ids, role) in zip(chunk, encode(chunk)):
            if cfg.bos == "document":
                push(np.array([bos]), *marker)
            push(ids, np.full(len(ids), d.doc_id, dtype=np.int64), role)
            if cfg.bos != "document":
                push(np.array([sep]), *marker)
        yield from flush_ready()
    if n_windows is not None and index >= n_windows:
        return
    if index == 0:  # the corpus ended before a single window was full
        raise BadInputError(f"the corpus has only {buffered} tokens, fewer than one window of "
                            f"{L}; lower the window (e.g. --window {max(2, buffered)}) or give "
                            "more text")
    if buffered > 0:
        log.warning("the corpus ended: its last %d tokens (less than one window of %d) are not "
                    "harvested", buffered, L)


class RankEncoder:
    """Tokenize a chunk of documents across data-parallel ranks: rank r encodes documents
    ``i % world == r`` of the chunk, then the ranks swap token ids (two all_gathers of int64
    tensors on ``group``, a CPU/gloo group) so every rank holds the whole chunk, in order. Every
    rank must call it with the same chunks (they all read the same corpus stream)."""

    def __init__(self, tokenizer, rank: int, world: int, group=None):
        self.tok, self.rank, self.world, self.group = tokenizer, rank, world, group
        self.docs_encoded = 0

    def __call__(self, docs) -> list:
        return self.assemble(docs, self.exchange(self.payload(docs)))

    def payload(self, docs):
        """Encode this rank's documents -> one int64 tensor [lengths, ids..., roles...]."""
        import torch

        enc = encode_docs(list(docs[self.rank::self.world]), self.tok)
        self.docs_encoded += len(enc)
        lens = np.asarray([len(ids) for ids, _ in enc], dtype=np.int64)
        parts = [lens] + [ids for ids, _ in enc] + [r.astype(np.int64) for _, r in enc]
        return torch.from_numpy(np.concatenate(parts))

    def exchange(self, payload) -> list:
        """Every rank's payload, in rank order (two all_gathers: sizes, then padded data)."""
        import torch
        import torch.distributed as dist

        n = torch.tensor([payload.numel()], dtype=torch.int64)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n, group=self.group)
        buf = torch.zeros(max(int(v) for v in sizes), dtype=torch.int64)
        buf[:payload.numel()] = payload
        got = [torch.zeros_like(buf) for _ in range(self.world)]
        dist.all_gather(got, buf, group=self.group)
        return [g[:int(k)] for g, k in zip(got, sizes)]

    def assemble(self, docs, payloads) -> list:
        """(ids, roles) per document of ``docs``, in order, from every rank's payload."""
        out: list = [None] * len(docs)
        for r, flat in enumerate(payloads):
            idx = range(r, len(docs), self.world)
            flat = flat.numpy()
            lens = flat[:len(idx)]
            total = int(lens.sum())
            ids_all = flat[len(idx):len(idx) + total]
            roles_all = flat[len(idx) + total:len(idx) + 2 * total]
            a = 0
            for i, ln in zip(idx, lens):
                out[i] = (ids_all[a:a + ln].copy(), roles_all[a:a + ln].astype(np.int8))
                a += int(ln)
        return out
