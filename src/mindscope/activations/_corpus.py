"""Corpora: a stream of documents (plain text or chat messages) from files on disk.

Sources: folders of ``.txt``/``.md`` files (one document per file), ``.jsonl`` (a text field, or
a ``messages`` list for chat), ``.parquet`` and Hugging Face datasets saved with
``save_to_disk`` (their ``.arrow`` files, read with pyarrow). A folder may mix them. Bad
records (broken JSON, a missing or non-string field) are reported with file and line, then
skipped (``on_error="skip"``, counted in ``corpus.bad``) or raised (``on_error="raise"``).

>>> # corpus = open_corpus("data/")                       # every .txt/.md/.jsonl/.parquet inside
>>> # corpus = open_corpus("chats.jsonl", messages_field="messages")
>>> # for doc in corpus: doc.doc_id, doc.text or doc.messages
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from ..core import BadInputError, inside, loads_checked, need, read_json

log = logging.getLogger(__name__)
TEXT_EXT = (".txt", ".md")
RECORD_EXT = (".jsonl", ".parquet", ".arrow")


class BadRecordError(BadInputError):
    """A corpus record could not be read (raised with ``on_error="raise"``); a BadInputError
    (so a ValueError) whose message names ``file:line``."""


@dataclass
class Document:
    """One document of a corpus: ``text`` for plain text, ``messages`` for a chat."""

    doc_id: int
    """Index of the document in the corpus stream (0, 1, 2, ... in reading order)."""
    text: Optional[str] = None
    messages: Optional[list] = None
    source: str = ""
    """Where it came from, ``file:line`` (jsonl), ``file:row`` (parquet/arrow) or ``file``."""
    add_generation_prompt: bool = False
    """Chat only: end the rendered transcript with the assistant header (a prompt list)."""


@dataclass
class BadRecords:
    """Bad records met while reading: a count and the first ``keep`` reasons."""

    count: int = 0
    examples: list = field(default_factory=list)
    keep: int = 50

    def add(self, where: str, why: str) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(f"{where}: {why}")

    def to_dict(self) -> dict:
        return {"count": self.count, "examples": list(self.examples)}


def _is_hf_dataset(p: Path) -> bool:
    return p.is_dir() and ((p / "state.json").exists() or (p / "dataset_dict.json").exists())


def _hf_arrow_files(p: Path, split: Optional[str]) -> list[Path]:
    """Arrow files of a ``save_to_disk`` folder (a Dataset, or one split of a DatasetDict);
    the file names its JSON records must stay inside the folder."""
    if (p / "dataset_dict.json").exists():
        dd = p / "dataset_dict.json"
        splits = need(read_json(dd, max_bytes=1 << 20, expect=dict, what="dataset_dict.json"),
                      "splits", list, dd)
        if not splits or not all(isinstance(x, str) for x in splits):
            raise BadInputError(dd, f"'splits' should be a non-empty list of names, got "
                                    f"{str(splits)[:60]}")
        name = split or ("train" if "train" in splits else splits[0])
        if name not in splits:
            raise FileNotFoundError(f"{p}: no split {name!r}; splits: {splits}")
        p = inside(p, name, dd, "split folder")
    st = p / "state.json"
    state = read_json(st, max_bytes=16 << 20, expect=dict, what="dataset state.json")
    files = state.get("_data_files", [])
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise BadInputError(st, "'_data_files' should be a list of {\"filename\": ...} objects")
    return [inside(p, need(f, "filename", str, st), st, "data file") for f in files] \
        or sorted(p.glob("*.arrow"))


def _iter_arrow_batches(path: Path):
    import pyarrow as pa

    with pa.memory_map(str(path)) as src:
        try:
            reader = pa.ipc.open_stream(src)  # save_to_disk writes the streaming format
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(src)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
            return
        yield from reader


@dataclass
class Corpus:
    """An iterable of ``Document``s from ``paths`` (files or folders), in a fixed order."""

    paths: Sequence[Union[str, Path]]
    """Files or folders; folders are walked recursively in sorted order."""
    text_field: str = "text"
    """Record field holding plain text (jsonl / parquet / arrow)."""
    messages_field: str = "messages"
    """Record field holding a chat (a list of {"role", "content"}); used when present."""
    format: str = "auto"
    """'auto' (chat if the record has ``messages_field``, else text), 'text' or 'chat'."""
    on_error: str = "skip"
    """What a bad record does: 'skip' (log it with file and line, count it) or 'raise'."""
    split: Optional[str] = None
    """Split of a saved DatasetDict (default: 'train', else the first one)."""
    bad: BadRecords = field(default_factory=BadRecords)

    def __post_init__(self):
        if isinstance(self.paths, (str, Path)):
            self.paths = [self.paths]
        self.paths = [Path(p).expanduser() for p in self.paths]
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', not {self.on_error!r}")
        if self.format not in ("auto", "text", "chat"):
            raise ValueError(f"format must be 'auto', 'text' or 'chat', not {self.format!r}")
        for p in self.paths:
            if not p.exists():
                raise FileNotFoundError(f"corpus path {p} does not exist")

    # ---- files -------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Every file read, in reading order."""
        out: list[Path] = []
        for p in self.paths:
            if _is_hf_dataset(p):
                out += _hf_arrow_files(p, self.split)
            elif p.is_dir():
                ds = [q for q in sorted(p.rglob("*")) if _is_hf_dataset(q)]
                ds = [d for d in ds if not any(o in d.parents for o in ds)]  # outermost only
                for f in sorted(p.rglob("*")):
                    if (f.is_file() and f.suffix in TEXT_EXT + RECORD_EXT
                            and not f.name.startswith(".") and not any(d in f.parents for d in ds)):
                        out.append(f)
                for d in ds:
                    out += _hf_arrow_files(d, self.split)
            elif p.suffix in TEXT_EXT + RECORD_EXT:
                out.append(p)
            else:
                raise ValueError(f"{p}: unsupported corpus file; use .txt/.md, .jsonl, .parquet, "
                                 ".arrow or a folder (a save_to_disk dataset folder works too)")
        if not out:
            raise FileNotFoundError(f"no corpus files (.txt .md .jsonl .parquet .arrow) under "
                                    f"{[str(p) for p in self.paths]}")
        return out

    def fingerprint(self) -> str:
        """sha256 of the reading options and every file's bytes (16 hex chars)."""
        h = hashlib.sha256(json.dumps([self.text_field, self.messages_field, self.format,
                                       self.split]).encode())
        for f in self.files():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:16]

    # ---- records -----------------------------------------------------------------------
    def _bad(self, where: str, why: str) -> None:
        if self.on_error == "raise":
            raise BadRecordError(f"{where}: {why} (pass on_error='skip' / --on-error skip to skip "
                                 "bad records; they are counted in the manifest)")
        log.warning("skipping bad record %s: %s", where, why)
        self.bad.add(where, why)

    def _record(self, rec, where: str, doc_id: int) -> Optional[Document]:
        if not isinstance(rec, dict):
            self._bad(where, f"expected a JSON object, got {type(rec).__name__}")
            return None
        want_chat = self.format == "chat" or (self.format == "auto" and
                                              rec.get(self.messages_field) is not None)
        if want_chat:
            msgs = rec.get(self.messages_field)
            if not isinstance(msgs, list) or not msgs:
                self._bad(where, f"field {self.messages_field!r} must be a non-empty list of "
                                 "{'role', 'content'} messages")
                return None
            for i, m in enumerate(msgs):
                if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                        and isinstance(m.get("content"), str)):
                    self._bad(where, f"message {i} needs string 'role' and 'content'")
                    return None
            msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
            return Document(doc_id, messages=msgs, source=where,
                            add_generation_prompt=msgs[-1]["role"] != "assistant")
        text = rec.get(self.text_field)
        if not isinstance(text, str):
            why = "missing" if text is None else f"not a string ({type(text).__name__})"
            self._bad(where, f"text field {self.text_field!r} is {why}; pick the field with "
                             "text_field= / --text-field")
            return None
        if not text.strip():
            self._bad(where, "empty text")
            return None
        return Document(doc_id, text=text, source=where)

    def _records(self, f: Path) -> Iterator[tuple]:
        """(record, where) pairs of one record file."""
        if f.suffix == ".jsonl":
            with open(f, encoding="utf-8", errors="replace") as fh:
                for i, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        yield loads_checked(line, f"{f}:{i}", max_depth=64, what="record"), \
                            f"{f}:{i}"
                    except BadInputError as e:
                        yield _Broken(e.problem.replace("not valid JSON", "invalid JSON")), \
                            f"{f}:{i}"
            return
        import pyarrow as pa

        kind = "Parquet" if f.suffix == ".parquet" else "Arrow"
        row = 0
        try:
            if f.suffix == ".parquet":
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(f)
                cols = [c for c in (self.text_field, self.messages_field)
                        if c in pf.schema_arrow.names]
                batches = pf.iter_batches(batch_size=1024, columns=cols or None)
            else:
                batches = _iter_arrow_batches(f)
            for b in batches:
                for rec in b.to_pylist():
                    yield rec, f"{f}:row {row}"
                    row += 1
        except (pa.ArrowException, OSError, ValueError) as e:
            if isinstance(e, BadInputError):
                raise
            raise BadInputError(f, f"is not a readable {kind} file (at row {row}: "
                                   f"{str(e)[:160]})", "the file is damaged or of another "
                                   "format; write it again or remove it from the corpus") from None

    def __iter__(self) -> Iterator[Document]:
        self.bad = BadRecords()
        doc_id = 0
        for f in self.files():
            if f.suffix in TEXT_EXT:
                text = f.read_text(encoding="utf-8", errors="replace")
                if not text.strip():
                    self._bad(str(f), "empty file")
                    continue
                yield Document(doc_id, text=text, source=str(f))
                doc_id += 1
                continue
            for rec, where in self._records(f):
                if isinstance(rec, _Broken):
                    self._bad(where, rec.why)
                    continue
                doc = self._record(rec, where, doc_id)
                if doc is not None:
                    yield doc
                    doc_id += 1


@dataclass
class _Broken:
    why: str


def open_corpus(spec: Union[str, Path, Sequence, Corpus, None] = "default", **kw) -> Corpus:
    """``"default"`` (the built-in corpus, built and cached on first use), a path, a list of
    paths, or a ``Corpus`` (returned as is). Keyword arguments go to ``Corpus``."""
    if isinstance(spec, Corpus):
        return spec
    if spec is None or (isinstance(spec, str) and spec == "default"):
        from ._default_corpus import build_default_corpus

        return Corpus([build_default_corpus()], **kw)
    return Corpus([spec] if isinstance(spec, (str, Path)) else list(spec), **kw)
