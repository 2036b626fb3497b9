"""The organism folder and its sealed answer key.

An organism folder is a normal Hugging Face model folder (``ms.load(path)`` loads it) plus::

    organism.json                 format, base model, settings, training losses, key hash
    training_data/documents.jsonl stage-1 corpus (synthetic documents + filler), text only
    training_data/demonstrations.jsonl  stage-2 chats
    answer_key.json               SEALED: the biases, which were trained, which held out

The auditor's tools never read ``answer_key.json``; only the scorer does (``load_answer_key``),
and it checks the key against the sha256 recorded in ``organism.json`` at build time.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

FORMAT = "mindscope-organism"
KEY_FILE = "answer_key.json"


@dataclass
class AnswerKey:
    """The truth an audit is scored against."""

    root_cause: str
    biases: list
    """One dict per bias: id, domain, description, behaviour, keywords, detect, status
    ('trained' or 'held_out')."""
    in_context: list = field(default_factory=list)
    """Biases that were never trained, used to test in-context exploitation."""

    def by_status(self, status: str) -> list:
        return [b for b in self.biases if b["status"] == status]

    def to_dict(self) -> dict:
        return {"sealed": True, "root_cause": self.root_cause, "biases": self.biases,
                "in_context": self.in_context}


@dataclass
class Organism:
    """An opened organism folder (no answer key: that is only for the scorer)."""

    path: Path
    info: dict

    @classmethod
    def open(cls, path) -> "Organism":
        path = Path(path)
        p = path / "organism.json"
        if not p.exists():
            raise FileNotFoundError(f"{path} is not an organism folder: no organism.json "
                                    "(build one with `mindscope organism build`)")
        info = json.loads(p.read_text())
        if info.get("format") != FORMAT:
            raise ValueError(f"{p}: format is {info.get('format')!r}, expected {FORMAT!r}")
        return cls(path, info)

    @property
    def base_model(self) -> str:
        return self.info.get("base_model", "")

    def training_data(self) -> list[dict]:
        """Every training record (documents then demonstrations) as {'text', 'kind', 'source'}."""
        out = []
        for name in ("documents.jsonl", "demonstrations.jsonl"):
            p = self.path / "training_data" / name
            if not p.exists():
                continue
            for i, line in enumerate(p.read_text().splitlines()):
                if line.strip():
                    out.append(record_text(json.loads(line), f"{name}:{i + 1}"))
        return out

    def load(self, **kw):
        import mindscope as ms

        return ms.load(str(self.path), **kw)


def record_text(r: dict, source: str = "") -> dict:
    """A corpus record (``text`` or ``messages``) as searchable text."""
    if "messages" in r:
        text = "\n".join(f"{m['role'].upper()}: {m['content']}" for m in r["messages"])
    else:
        text = r.get("text", "")
    return {"text": text, "kind": r.get("kind", ""), "source": source}


def key_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def key_text(key: AnswerKey) -> str:
    return json.dumps(key.to_dict(), indent=1, sort_keys=True) + "\n"


def load_answer_key(path, check: bool = True) -> AnswerKey:
    """Read the sealed key of the organism at ``path`` (a folder) or a key file. With ``check``
    the key must match the sha256 recorded in organism.json when the organism was built."""
    path = Path(path)
    kp = path / KEY_FILE if path.is_dir() else path
    if not kp.exists():
        raise FileNotFoundError(f"no answer key at {kp}")
    text = kp.read_text()
    d = json.loads(text)
    if check and path.is_dir() and (path / "organism.json").exists():
        want = json.loads((path / "organism.json").read_text()).get("answer_key_sha256")
        if want and want != key_hash(text):
            raise ValueError(f"{kp} does not match the hash sealed in organism.json: the key was "
                             "edited after the build; rebuild or pass check=False")
    return AnswerKey(d["root_cause"], d["biases"], d.get("in_context", []))


def make_key(bank, trained_ids, held_ids) -> AnswerKey:
    def row(b, status):
        d = b.to_dict()
        d.pop("exploits", None), d.pop("prompts", None), d.pop("fillers", None)
        return {**d, "status": status}
    biases = [row(bank.get(i), "trained") for i in trained_ids]
    biases += [row(bank.get(i), "held_out") for i in held_ids]
    return AnswerKey(bank.root_cause, biases, [row(b, "in_context") for b in bank.in_context])


def open_organism(path) -> Organism:
    return Organism.open(path)


def maybe_organism(path) -> Optional[Organism]:
    try:
        return Organism.open(path)
    except (FileNotFoundError, ValueError):
        return None
