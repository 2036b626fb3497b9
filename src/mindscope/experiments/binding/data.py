"""Synthetic multi-entity stories with token-level entity labels, and the prompts of the binding
tasks (entity induction, adjacent-entity conflict, explicit retrieval, double binding).

A story is a list of SEGMENTS, one per entity, each describing that entity (name, one adjective,
one action). Every token of segment k is labelled with ``current`` = entity k and ``prior`` =
entity k-1 (-1 in the first segment), plus their adjectives; labels come from character spans
mapped to tokens through the offsets that ``lm.tokenize`` records in ``Batch.meta[i].offsets``.

>>> d = BindingData.load()
>>> s = render_story(d, ["Alice", "Bob"], ["tall", "old"], ["cooks soup", "reads a book"], [0, 1])
>>> s.text
'Alice is tall. She cooks soup. Bob is old and reads a book.'
>>> [s.text[a:b] for a, b in s.spans]
['Alice is tall. She cooks soup.', ' Bob is old and reads a book.']
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

_FILES = ("names.json", "attributes.json", "templates.json")


@dataclass
class BindingData:
    """Names (+ pronouns), adjectives, actions and templates (``data/binding/*.json``)."""

    names: list
    pronouns: dict
    adjectives: list
    actions: list
    templates: dict

    @classmethod
    def load(cls, folder: Optional[str] = None) -> "BindingData":
        root = Path(folder) if folder else resources.files("mindscope") / "data" / "binding"
        raw = {}
        for f in _FILES:
            p = root / f
            try:
                raw[f] = json.loads(p.read_text())
            except FileNotFoundError:
                raise FileNotFoundError(f"binding data file {p} is missing; a data folder holds "
                                        f"{', '.join(_FILES)}") from None
            except ValueError as e:
                raise ValueError(f"binding data file {p} is not valid JSON: {e}") from None
        try:
            names = [n["name"] for n in raw["names.json"]["names"]]
            pron = {n["name"]: n["pronoun"] for n in raw["names.json"]["names"]}
            adjs, acts = raw["attributes.json"]["adjectives"], raw["attributes.json"]["actions"]
            tmpl = raw["templates.json"]
            tmpl["segments"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"binding data in {root} lacks field {e}; see the bundled files in "
                             "mindscope/data/binding for the layout") from None
        if len(set(names)) != len(names) or len(set(adjs)) != len(adjs):
            raise ValueError(f"binding data in {root}: names and adjectives must be unique")
        return cls(names, pron, adjs, acts, tmpl)

    def subset(self, names: Sequence[str], adjectives: Sequence[str]) -> "BindingData":
        return BindingData(list(names), {n: self.pronouns.get(n, "they") for n in names},
                           list(adjectives), self.actions, self.templates)


@dataclass
class Story:
    text: str
    names: list
    """Entity of each segment, in story order."""
    adjs: list
    actions: list
    spans: list
    """(char_start, char_end) of each segment; segments after the first include the leading space."""
    id: int = 0


def render_story(d: BindingData, names, adjs, actions, template_ids, story_id: int = 0) -> Story:
    """Join one segment per entity (``template_ids`` index ``d.templates['segments']``)."""
    segs = d.templates["segments"]
    text, spans = "", []
    for i, (n, a, act, t) in enumerate(zip(names, adjs, actions, template_ids)):
        p = d.pronouns.get(n, "they")
        seg = segs[t].format(name=n, adj=a, action=act, pron=p, Pron=p.capitalize())
        start = len(text)
        text += (" " if i else "") + seg
        spans.append((start, len(text)))
    return Story(text, list(names), list(adjs), list(actions), spans, story_id)


def _pick(rng, pool, k):
    if k > len(pool):
        raise ValueError(f"need {k} distinct items but the pool has only {len(pool)}: {pool[:5]}...")
    return [pool[i] for i in rng.permutation(len(pool))[:k]]


def generate_stories(d: BindingData, n: int, n_entities=(3, 5), seed: int = 0) -> list[Story]:
    """``n`` stories of ``n_entities`` (min, max) distinct entities with distinct adjectives."""
    lo, hi = n_entities
    if not 2 <= lo <= hi:
        raise ValueError(f"n_entities must satisfy 2 <= min <= max; got {n_entities}")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(lo, hi + 1))
        out.append(render_story(d, _pick(rng, d.names, k), _pick(rng, d.adjectives, k),
                                _pick(rng, d.actions, k),
                                rng.integers(0, len(d.templates["segments"]), k).tolist(), i))
    return out


def name_chars(text: str, names: Sequence[str], end: Optional[int] = None) -> np.ndarray:
    """(len(text),) bool: True on the characters of whole-word mentions of ``names`` in
    ``text[:end]`` (the story part of a prompt).

    >>> name_chars("Bob met Bobby. Ann", ["Bob", "Ann"]).nonzero()[0].tolist()
    [0, 1, 2, 15, 16, 17]
    """
    end = len(text) if end is None else end
    out = np.zeros(len(text), bool)
    if not names:
        return out
    pat = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                     + r")\b")
    for m in pat.finditer(text, 0, end):
        out[m.start():m.end()] = True
    return out


def token_labels(story: Story, offsets, name_index: dict, adj_index: dict) -> dict:
    """Per token (T,): ``segment``, ``current``, ``prior``, ``current_attr``, ``prior_attr``
    (class indices from ``name_index`` / ``adj_index``; -1 where there is none, e.g. the prior
    entity in the first segment, or special tokens with empty offsets), and ``mention`` (1 on
    the tokens of an entity's name, 0 elsewhere).

    A token belongs to the segment (and to a name) holding its last character."""
    T = len(offsets)
    seg = np.full(T, -1)
    mention = np.zeros(T, int)
    chars = name_chars(story.text, story.names)
    for t, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        mention[t] = int(chars[b - 1]) if b - 1 < len(chars) else 0
        for k, (s, e) in enumerate(story.spans):
            if s <= b - 1 < e:
                seg[t] = k
                break
    cur_n = np.array([name_index[x] for x in story.names])
    cur_a = np.array([adj_index[x] for x in story.adjs])

    def at(vals, shift):
        out = np.full(T, -1)
        ok = seg - shift >= 0
        out[ok] = vals[seg[ok] - shift]
        return out

    return {"segment": seg, "current": at(cur_n, 0), "prior": at(cur_n, 1),
            "current_attr": at(cur_a, 0), "prior_attr": at(cur_a, 1), "mention": mention}


# ---- task prompts ----------------------------------------------------------------------------
@dataclass
class Item:
    """One scored prompt: the model's next-token log-probs of ``candidates`` (first token each)."""

    task: str
    prompt: str
    candidates: list
    answer: int = 0
    """Index of the right candidate (for yes/no: 0 = Yes is right)."""
    story_chars: int = 0
    """Characters [0, story_chars) are the story: the positions slot ablations touch."""
    condition: str = ""
    pair: int = -1
    meta: dict = field(default_factory=dict)


def induction_items(d: BindingData, n: int, n_entities=(3, 5), seed: int = 0) -> list[Item]:
    """Entity-level induction: after the story, the same entities are listed in story order and
    the model must name the entity that came after the last one listed ("who came after X?")."""
    out = []
    rng = np.random.default_rng(seed + 101)
    n_entities = (max(3, n_entities[0]), max(3, n_entities[1]))
    for s in generate_stories(d, n, n_entities, seed + 1):
        if len(s.names) < 3:
            raise ValueError("induction items need stories of at least 3 entities")
        j = int(rng.integers(1, len(s.names) - 1))  # at least two names left to choose from
        cands = [" " + x for x in s.names[j:]]
        prompt = d.templates["induction"].format(story=s.text, listed=", ".join(s.names[:j]))
        out.append(Item("induction", prompt, cands, 0, len(s.text), meta={"after": s.names[j - 1]}))
    return out


def conflict_items(d: BindingData, n: int, n_entities=(3, 5), seed: int = 0) -> list[Item]:
    """Adjacent-entity conflict: "... A is a. B is b" -> log p(" too"). In the MATCH story a == b;
    in the paired MISMATCH story a non-adjacent earlier entity C holds b and A holds another
    adjective, so both stories contain the same words and only the A-B binding differs."""
    rng = np.random.default_rng(seed + 202)
    out = []
    lo = max(3, n_entities[0])
    for i in range(n):
        k = int(rng.integers(lo, max(lo, n_entities[1]) + 1))
        names = _pick(rng, d.names, k)
        b, x, *rest = _pick(rng, d.adjectives, k)
        acts = _pick(rng, d.actions, k)
        c = int(rng.integers(0, k - 2))  # the non-adjacent earlier entity
        tids = rng.integers(0, len(d.templates["segments"]), k).tolist()
        for cond, (adj_c, adj_a) in (("match", (x, b)), ("mismatch", (b, x))):
            adjs = list(rest[:k - 3]) if k > 3 else []
            adjs = adjs[:c] + [adj_c] + adjs[c:]  # entities 0..k-3 (k-2 of them)
            adjs = adjs[:k - 2] + [adj_a]  # entity k-2 = A
            s = render_story(d, names[:k - 1], adjs, acts[:k - 1], tids[:k - 1])
            # A's segment in the plain form, then B's open segment
            head = s.text[:s.spans[-1][0]]
            seg_a = d.templates["conflict_segment"].format(name=names[k - 2], adj=adj_a)
            prompt = head + (" " if head else "") + seg_a + " " + \
                d.templates["conflict_segment"].format(name=names[k - 1], adj=b).rstrip(".")
            out.append(Item("conflict", prompt, [d.templates["conflict_probe"]], 0, len(prompt),
                            cond, i, {"A": names[k - 2], "B": names[k - 1], "C": names[c]}))
    return out


def retrieval_items(d: BindingData, n: int, n_entities=(3, 5), seed: int = 0) -> list[Item]:
    """Explicit retrieval: "Is anyone in the story tall?" (half yes, half no) and "Who is tall?"."""
    rng = np.random.default_rng(seed + 303)
    t = d.templates
    out = []
    for i, s in enumerate(generate_stories(d, n, n_entities, seed + 3)):
        present = i % 2 == 0
        adj = s.adjs[int(rng.integers(len(s.adjs)))] if present else \
            _pick(rng, [a for a in d.adjectives if a not in s.adjs], 1)[0]
        out.append(Item("retrieval_yes_no", t["retrieval_yes_no"].format(story=s.text, adj=adj),
                        [t["yes"], t["no"]], 0 if present else 1, len(s.text),
                        "yes" if present else "no"))
        e = int(rng.integers(len(s.names)))
        out.append(Item("retrieval_name", t["retrieval_name"].format(story=s.text, adj=s.adjs[e]),
                        [" " + x for x in s.names], e, len(s.text)))
    return out


def binding_items(d: BindingData, n: int, seed: int = 0) -> list[Item]:
    """Double binding on one token ("A prepares and B consumes the food.") next to the
    single-binding control ("A prepares the food. B consumes the food."); who did verb v?"""
    rng = np.random.default_rng(seed + 404)
    t = d.templates
    out = []
    for i in range(n):
        a, b = _pick(rng, d.names, 2)
        v1, v2, obj = t["verb_pairs"][int(rng.integers(len(t["verb_pairs"])))]
        ask_second = i % 2 == 1
        verb = v2 if ask_second else v1
        for cond, key in (("double", "double_binding"), ("single", "single_binding")):
            text = t[key].format(a=a, b=b, v1=v1, v2=v2, obj=obj)
            out.append(Item("binding", t["binding_question"].format(text=text, verb=verb, obj=obj),
                            [" " + a, " " + b], int(ask_second), len(text), cond, i))
    return out
