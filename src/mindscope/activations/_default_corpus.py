"""The default corpus: English prose, code and chat, built from what every Python install ships,
so harvesting runs anywhere with no download and no user data.

Make-up (built once, deterministically, in seconds; cached under ``cache_dir()/corpus``):

- prose: the Python language reference topics that ship with pydoc (``pydoc_data.topics``),
  ``pydoc`` pages of the built-in C modules, and the docstrings of every standard-library module, class and function, laid out like
  ``pydoc`` text (found with ``ast``, so no module is imported).
- code: the standard-library ``.py`` sources themselves (tests excluded).
- chat: conversations rendered later with the model's own chat template: a question about a
  stdlib function or a language topic answered by its documentation (some with a system prompt,
  some two turns long), and a shipped list of everyday user prompts (transcripts end at the
  assistant header).

Documents are interleaved in a fixed pseudo-random order, so any prefix of the corpus has all
three kinds. The exact text depends on the Python version (recorded in ``info.json``).
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import json
import logging
import os
import random
import sys
import sysconfig
from pathlib import Path

from ..core import atomic_dir, atomic_write_text, read_json

log = logging.getLogger(__name__)
VERSION = 1
_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages",
              "lib2to3", "turtledemo", "ensurepip"}
_QUESTIONS = [
    "What does `{name}` do in Python?",
    "Can you explain `{name}` from the Python standard library?",
    "How do I use {name}?",
    "I'm reading some code that calls `{name}`. What is it for?",
    "Explain {name} briefly.",
    "What is the purpose of `{name}`?",
]
_TOPIC_QUESTIONS = [
    "Explain how {name} works in Python.",
    "What does the Python reference say about {name}?",
    "Can you describe the {name} part of the Python language?",
]
_SYSTEMS = [
    "You are a helpful assistant who explains Python clearly.",
    "You are a concise technical writer.",
    "Answer as a patient programming tutor.",
]
# Character budgets per kind (about 3.5-4.5 characters per token for SmolLM2's tokenizer).
BUDGET = {"prose": 4_000_000, "code": 3_400_000, "chat": 2_200_000}
# C modules documented with pydoc (importing them has no side effects); missing ones are skipped.
_C_MODULES = ["math", "cmath", "array", "binascii", "zlib", "select", "mmap", "unicodedata",
              "_decimal", "_datetime", "_json", "_csv", "_bisect", "_heapq", "_random", "_struct",
              "_pickle", "_socket", "_sqlite3", "_asyncio", "_queue", "_statistics", "_contextvars"]


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        if any(part.startswith("test") for part in rel.parts):
            continue
        out += [Path(dirpath) / f for f in sorted(filenames)
                if f.endswith(".py") and not f.startswith("test_")]
    return out


def _module_name(root: Path, f: Path) -> str:
    parts = list(f.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _docs_of(tree: ast.Module, mod: str) -> tuple[str, list[tuple[str, str]]]:
    """(pydoc-like page of the module, [(qualified name, docstring)] of its functions/classes)."""
    lines = [f"Help on module {mod}:", "", "NAME", f"    {mod}", ""]
    doc = ast.get_docstring(tree)
    if doc:
        lines += ["DESCRIPTION", *("    " + ln for ln in doc.splitlines()), ""]
    items: list[tuple[str, str]] = []

    def visit(node, prefix):
        for ch in node.body:
            if isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if ch.name.startswith("_") and not ch.name.startswith("__init__"):
                    continue
                d = ast.get_docstring(ch)
                name = f"{prefix}{ch.name}"
                if d:
                    if isinstance(ch, ast.ClassDef):
                        head = f"class {name}"
                    else:
                        head = f"{name}({ast.unparse(ch.args)})"
                    lines.extend([head, *("    " + ln for ln in inspect.cleandoc(d).splitlines()),
                                  ""])
                    items.append((f"{mod}.{name}", inspect.cleandoc(d)))
                if isinstance(ch, ast.ClassDef):
                    visit(ch, name + ".")

    visit(tree, "")
    return "\n".join(lines), items


def _drop_sections(page: str, drop=("DATA", "FILE", "MODULE REFERENCE")) -> str:
    """Remove pydoc sections that show this process' state or paths (keeps builds identical)."""
    out, keep = [], True
    for ln in page.splitlines():
        if ln and not ln[0].isspace() and ln.isupper():
            keep = ln.strip() not in drop
        if keep:
            out.append(ln)
    return "\n".join(out)


def _collect(budget: dict) -> dict[str, list[dict]]:
    rng = random.Random(0)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files()
    order = sorted(files, key=lambda f: hashlib.sha256(str(f.relative_to(root)).encode()).digest())
    prose, code, chat, qa = [], [], [], []
    used = {"prose": 0, "code": 0, "chat": 0}
    from pydoc_data.topics import topics  # a plain dict of the language reference, as text

    for name in sorted(topics):
        text = topics[name].strip()
        if len(text) > 200:
            prose.append({"kind": "prose", "source": f"pydoc_data.topics:{name}", "text": text})
            used["prose"] += len(text)
            qa.append((name, text[:3000], True))
    import importlib
    import pydoc

    for m in sorted((set(sys.builtin_module_names) | set(_C_MODULES)) - {"sys", "posix", "_imp"}):
        try:
            page = _drop_sections(pydoc.plaintext.document(importlib.import_module(m)))
        except Exception:  # noqa: BLE001 - a module this build lacks
            continue
        if len(page) > 300:
            prose.append({"kind": "prose", "source": f"pydoc:{m}", "text": page})
            used["prose"] += len(page)
    for f in order:
        try:
            src = f.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        rel = str(f.relative_to(root))
        if used["code"] < budget["code"] and 200 < len(src) < 150_000:
            code.append({"kind": "code", "source": rel, "text": src})
            used["code"] += len(src)
        page, items = _docs_of(tree, _module_name(root, f))
        if used["prose"] < budget["prose"] and len(page) > 300:
            prose.append({"kind": "prose", "source": f"docstrings:{rel}", "text": page})
            used["prose"] += len(page)
        qa += [(n, d, False) for n, d in items if len(d) > 150]
        if (used["code"] >= budget["code"] and used["prose"] >= budget["prose"]
                and sum(len(d) for _, d, _ in qa) >= 2 * budget["chat"]):
            break  # a small budget: enough material already (the full build reads every file)
    rng.shuffle(qa)
    prompts = json.loads((Path(__file__).resolve().parents[1] / "data" / "corpus" /
                          "chat_prompts.json").read_text())["prompts"]
    for p in prompts:
        chat.append({"kind": "chat", "source": "chat_prompts.json",
                     "messages": [{"role": "user", "content": p}]})
    i = 0
    while i < len(qa) and used["chat"] < budget["chat"]:
        turns = 2 if rng.random() < 0.25 and i + 1 < len(qa) else 1
        msgs = []
        if rng.random() < 0.3:
            msgs.append({"role": "system", "content": rng.choice(_SYSTEMS)})
        for name, doc, is_topic in qa[i:i + turns]:
            q = rng.choice(_TOPIC_QUESTIONS if is_topic else _QUESTIONS).format(name=name)
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": doc}]
        i += turns
        chat.append({"kind": "chat", "source": "stdlib-docs-qa", "messages": msgs})
        used["chat"] += sum(len(m["content"]) for m in msgs)
    return {"prose": prose, "code": code, "chat": chat}


def default_corpus_dir() -> Path:
    from ..core import cache_dir

    v = sys.version_info
    return cache_dir() / "corpus" / f"default-v{VERSION}-py{v.major}.{v.minor}.{v.micro}"


def build_default_corpus(out: str | Path | None = None, force: bool = False,
                         budget: dict | None = None) -> Path:
    """Build the default corpus once (deterministic, ~10 s) and return its folder, which holds
    ``corpus.jsonl`` (one document per line: ``text`` or ``messages``, plus ``kind``/``source``)
    and ``info.json`` (counts per kind, content hash)."""
    out = Path(out) if out is not None else default_corpus_dir()
    if (out / "info.json").exists() and not force:
        return out
    budget = {**BUDGET, **(budget or {})}
    log.info("building the default corpus at %s (once)", out)
    kinds = _collect(budget)
    docs = [d for k in ("prose", "code", "chat") for d in kinds[k]]
    random.Random(1).shuffle(docs)  # interleave kinds so any prefix is mixed
    h = hashlib.sha256()
    with atomic_dir(out) as tmp:
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as fh:
            for d in docs:
                line = json.dumps(d, ensure_ascii=False)
                h.update(line.encode())
                fh.write(line + "\n")
        info = {"version": VERSION, "python": sys.version.split()[0], "hash": h.hexdigest()[:16],
                "n_docs": len(docs), "budget_chars": budget,
                "docs": {k: len(v) for k, v in kinds.items()},
                "chars": {k: sum(len(d.get("text") or "") + sum(len(m["content"]) for m in
                                 d.get("messages") or []) for d in v) for k, v in kinds.items()},
                "tokens": {}}
        (tmp / "info.json").write_text(json.dumps(info, indent=1))
    return out


def corpus_info(path: str | Path | None = None, tokenizer=None, name: str | None = None) -> dict:
    """The default corpus' ``info.json``; with a tokenizer, also its size in tokens per kind
    (counted once per tokenizer ``name`` and stored)."""
    path = Path(path) if path is not None else build_default_corpus()
    info = read_json(path / "info.json", expect=dict, what="corpus info file",
                     fix="rebuild it: `mindscope corpus build --force`")
    if tokenizer is None:
        return info
    name = name or getattr(tokenizer, "name_or_path", "tokenizer")
    if name not in info["tokens"]:
        from ..core import render_chat

        counts = {"prose": 0, "code": 0, "chat": 0}
        with open(path / "corpus.jsonl", encoding="utf-8") as fh:
            recs = [json.loads(line) for line in fh]
        texts = [r.get("text") or render_chat(tokenizer, r["messages"],
                                              add_generation_prompt=r["messages"][-1]["role"]
                                              != "assistant").text for r in recs]
        for i in range(0, len(texts), 256):
            enc = tokenizer(texts[i:i + 256], add_special_tokens=False)["input_ids"]
            for r, ids in zip(recs[i:i + 256], enc):
                counts[r["kind"]] += len(ids)
        counts["total"] = sum(counts.values())
        info["tokens"][name] = counts
        atomic_write_text(path / "info.json", json.dumps(info, indent=1))
    return info
