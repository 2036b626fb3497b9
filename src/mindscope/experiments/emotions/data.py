"""Shipped data of the emotion-concepts protocol and the three story sources.

- ``load_table()``: the 30 emotions with approximate valence/arousal (source stated in the file),
  story topics and neutral sentences (``data/emotions/emotions.json``).
- ``shipped_stories()``: 3 original short stories per emotion, emotion word never used.
- ``load_story_jsonl(path)``: user-provided stories, one ``{"emotion": ..., "text": ...}`` a line.
- ``model_stories(lm, ...)``: the model writes the stories (batched generation).
- ``load_tasks()``: intensity scenarios, activities, multiple-choice scenarios, a conversation.

>>> t = load_table(); len(t["emotions"]) >= 30 and {"valence", "arousal"} <= set(t["emotions"][0])
True
>>> s = shipped_stories(); all(e not in x.lower() for e, xs in s.items() for x in xs)
True
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from .._common import shipped_json

log = logging.getLogger(__name__)

STORY_PROMPT = ("Write a short story of three sentences about {topic} in which a character feels "
                "{emotion}. Show the feeling through what the character does and notices. Do not "
                "use the word \"{emotion}\".")


def load_table() -> dict:
    """{"source", "emotions": [{"name", "valence", "arousal"}], "topics", "neutral"}."""
    return shipped_json("emotions", "emotions.json")


def shipped_stories() -> dict[str, list[str]]:
    return shipped_json("emotions", "stories.json")


def load_tasks() -> dict:
    """{"intensity": [...], "activities": [...], "choices": [...], "conversation": [...]}."""
    return shipped_json("emotions", "tasks.json")


def load_story_jsonl(path, emotions: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
    """Stories from a JSONL file (``{"emotion": "afraid", "text": "..."}`` per line), grouped by
    emotion in file order. ``emotions`` restricts (and checks) the set kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"story file {path} does not exist; give a JSONL file with one "
                                '{"emotion": ..., "text": ...} object per line')
    out: dict[str, list[str]] = {}
    for ln, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{ln}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("emotion"), str) \
                or not isinstance(rec.get("text"), str) or not rec["text"].strip():
            raise ValueError(f"{path}:{ln}: each line needs string fields 'emotion' and 'text'")
        out.setdefault(rec["emotion"].strip().lower(), []).append(rec["text"].strip())
    if emotions is not None:
        want = [e.lower() for e in emotions]
        missing = [e for e in want if e not in out]
        if missing:
            raise ValueError(f"{path} has no stories for {missing}; it has {sorted(out)}")
        out = {e: out[e] for e in want}
    if len(out) < 2:
        raise ValueError(f"{path}: need stories for at least 2 emotions; found {sorted(out)}")
    return out


def model_stories(lm, emotions: Sequence[str], topics: Sequence[str], per_emotion: int = 3,
                  max_new_tokens: int = 64, temperature: float = 0.8, seed: int = 0,
                  batch_size: int = 32) -> dict[str, list[str]]:
    """The model writes ``per_emotion`` stories per emotion (topics cycled). Stories that name the
    emotion or come out empty are dropped (logged); an emotion left with none raises."""
    prompts, keys = [], []
    for e in emotions:
        for i in range(per_emotion):
            prompts.append(STORY_PROMPT.format(topic=topics[i % len(topics)], emotion=e))
            keys.append(e)
    gens = lm.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                       seed=seed, batch_size=batch_size)
    out: dict[str, list[str]] = {e: [] for e in emotions}
    dropped = 0
    for e, g in zip(keys, gens):
        text = g.text.strip()
        if len(text) < 20 or e.lower() in text.lower():
            dropped += 1
            continue
        out[e].append(text)
    log.info("model-written stories: kept %d, dropped %d (empty or naming the emotion)",
             len(prompts) - dropped, dropped)
    empty = [e for e, v in out.items() if not v]
    if empty:
        raise ValueError(f"the model wrote no usable story for {empty}; use story_source="
                         "'shipped' or a JSONL file of stories from a stronger model")
    return out
