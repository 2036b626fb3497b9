"""Benchmark items in the Humanity's Last Exam (HLE) layout.

An item is one question with a reference answer. Files are JSONL (one JSON object a line) or
Parquet, including the official HLE parquet (``cais/hle``, columns ``id, question, image,
image_preview, answer, answer_type, author_name, rationale, rationale_image, raw_subject,
category, canary``). Items with an image are skipped (text-only models) and counted.

>>> s = load_items(SAMPLE_PATH)
>>> len(s), s.skipped_images, s.items[0].answer_type
(40, 0, 'exactMatch')
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..core import BadInputError, loads_checked

log = logging.getLogger(__name__)
MAX_LINE = 64 << 20
"""Longest JSONL line accepted (64 MiB): an item is a question, not a data dump."""

ANSWER_TYPES = ("multipleChoice", "exactMatch")
_ALIASES = {"multiplechoice": "multipleChoice", "multiple_choice": "multipleChoice", "mc": "multipleChoice",
            "exactmatch": "exactMatch", "exact_match": "exactMatch", "exact": "exactMatch"}
SAMPLE_PATH = Path(str(resources.files("mindscope") / "data" / "hle_sample.jsonl"))
"""The bundled sample: 40 original items written for mindscope (not HLE questions)."""


@dataclass(frozen=True)
class Item:
    """One benchmark question."""

    id: str
    """Unique id (string); the key used to resume runs."""
    question: str
    """Question text; multiple-choice items list their choices inside it ("Answer Choices: A. ...")."""
    answer: str
    """Reference answer: a letter for multiple choice, a short string for exact match."""
    answer_type: str = "exactMatch"
    """``multipleChoice`` or ``exactMatch``."""
    category: Optional[str] = None
    """Broad subject (HLE: Math, Physics, ...); used for the per-category breakdown."""
    rationale: Optional[str] = None
    """Why the answer is right (never shown to the model)."""
    raw_subject: Optional[str] = None
    """Finer subject label (HLE ``raw_subject``)."""

    def __post_init__(self) -> None:
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"item {self.id!r}: answer_type must be one of {ANSWER_TYPES}, "
                             f"got {self.answer_type!r}")
        if not str(self.question).strip():
            raise ValueError(f"item {self.id!r}: empty question")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("id", "question", "answer", "answer_type",
                                               "category", "rationale", "raw_subject")}


@dataclass
class ItemSet:
    """Items loaded from one source, with what was skipped."""

    items: list[Item]
    source: str = ""
    skipped_images: int = 0
    """Items dropped because they carry an image."""
    skipped_filter: int = 0
    """Items dropped by the category / answer-type / limit filters."""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def summary(self) -> dict:
        return {"source": self.source, "n": len(self.items), "skipped_images": self.skipped_images,
                "skipped_filter": self.skipped_filter}


def _norm_type(t: object, where: str) -> str:
    s = str(t or "exactMatch").strip()
    if s in ANSWER_TYPES:
        return s
    key = s.lower().replace(" ", "")
    if key in _ALIASES:
        return _ALIASES[key]
    raise BadInputError(where, f"unknown answer_type {str(t)[:40]!r}; use 'multipleChoice' or "
                               "'exactMatch'")


def _has_image(rec: dict) -> bool:
    img = rec.get("image")
    return bool(img) and str(img).strip() not in ("", "None", "null")


def _opt(rec: dict, k: str) -> Optional[str]:
    v = rec.get(k)
    return None if v is None or (isinstance(v, float) and v != v) or v == "" else str(v)


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    fix = "each line must be one JSON object with id, question, answer, answer_type"
    with open(path, "rb") as f:
        ln = 0
        while True:
            line = f.readline(MAX_LINE + 1)
            if not line:
                break
            ln += 1
            if len(line) > MAX_LINE:
                raise BadInputError(f"{path}:{ln}", f"line longer than {MAX_LINE:,} bytes", fix)
            if not line.strip():
                continue
            rec = loads_checked(line, f"{path}:{ln}", max_depth=32, expect=dict, what="item",
                                fix=fix)
            rec["_where"] = f"{path}:{ln}"
            out.append(rec)
    return out


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa

    try:
        return _read_parquet_raw(path)
    except (pa.ArrowException, OSError) as e:
        raise BadInputError(path, f"is not a readable items table ({str(e)[:160]})",
                            "give an HLE-layout parquet or a .jsonl of items") from None


def _read_parquet_raw(path: Path) -> list[dict]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    want = ["id", "question", "answer", "answer_type", "rationale", "raw_subject", "category"]
    missing = [c for c in ("id", "question", "answer") if c not in schema.names]
    if missing:
        raise BadInputError(path, f"parquet lacks column(s) {missing}; found {schema.names}. "
                                  "Expected the HLE layout (id, question, image, answer, "
                                  "answer_type, ...)")
    cols = [c for c in want if c in schema.names]
    table = pq.read_table(path, columns=cols + (["image"] if "image" in schema.names else []))
    if "image" in table.column_names:  # keep only a flag; images can be hundreds of MB of base64
        has_img = pc.fill_null(pc.greater(pc.utf8_length(table["image"]), 0), False)
        table = table.drop_columns(["image"]).append_column("image", has_img)
    rows = table.to_pylist()
    for i, r in enumerate(rows):
        r["_where"] = f"{path} row {i}"
    return rows


def load_items(path: str | Path | None = None, *, categories: Optional[Sequence[str]] = None,
               answer_types: Optional[Sequence[str]] = None, limit: Optional[int] = None) -> ItemSet:
    """Load items from JSONL or Parquet (``None`` -> the bundled sample).

    Image items are skipped and counted in ``skipped_images``; ``categories`` / ``answer_types``
    keep only matching items; ``limit`` keeps the first N after filtering.
    """
    path = SAMPLE_PATH if path is None or str(path) in ("sample", "hle-sample") else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; give a .jsonl or .parquet file of items "
                                "(or 'sample' for the bundled sample)")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        recs = _read_jsonl(path)
    elif suffix in (".parquet", ".pq"):
        recs = _read_parquet(path)
    else:
        raise BadInputError(path, f"unknown item format {suffix!r}; use .jsonl or .parquet")
    if answer_types:
        answer_types = [_norm_type(t, "answer_types") for t in answer_types]
    items: list[Item] = []
    seen: set[str] = set()
    n_img = n_filt = 0
    for r in recs:
        where = r.pop("_where")
        if _has_image(r):
            n_img += 1
            continue
        for k in ("id", "question", "answer"):
            if r.get(k) is None or str(r[k]).strip() == "":
                raise BadInputError(where, f"missing field {k!r}")
            if not isinstance(r[k], (str, int, float)) or isinstance(r[k], bool):
                raise BadInputError(where, f"field {k!r} should be text, got {type(r[k]).__name__}")
        try:
            it = Item(id=str(r["id"]), question=str(r["question"]), answer=str(r["answer"]).strip(),
                      answer_type=_norm_type(r.get("answer_type"), where),
                      category=_opt(r, "category"), rationale=_opt(r, "rationale"),
                      raw_subject=_opt(r, "raw_subject"))
        except BadInputError:
            raise
        except ValueError as e:
            raise BadInputError(where, str(e)) from None
        if it.id in seen:
            raise BadInputError(where, f"duplicate id {it.id[:60]!r}; ids must be unique to resume "
                                       "runs")
        seen.add(it.id)
        if (categories and it.category not in categories) or (answer_types and it.answer_type not in answer_types):
            n_filt += 1
            continue
        items.append(it)
    if limit is not None and len(items) > limit:
        n_filt += len(items) - limit
        items = items[:limit]
    if n_img:
        log.info("%s: skipped %d image item(s) (text-only evaluation)", path, n_img)
    if not items:
        raise BadInputError(path, f"no text items left (skipped {n_img} with images, {n_filt} by "
                                  "filters)")
    return ItemSet(items=items, source=str(path), skipped_images=n_img, skipped_filter=n_filt)
