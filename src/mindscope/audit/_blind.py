"""What a blind auditor reads out of tool outputs, with no built-in knowledge of the theme.

* ``distinctive_phrases(texts, reference)``: word bigrams ranked by how over-represented they are
  in ``texts`` against a reference corpus of ordinary text: the log-odds ratio of the bigram's
  count (per bigram slot, +0.5 smoothing; its z-score with Woolf's standard error is reported
  too). The theme of an audit is the highest-ranked bigram that occurs in at least ``MIN_DF``
  of the records, when its log-odds ratio clears ``LOR_MIN`` (a theme pervades the corpus and
  is nearly absent from ordinary text; a topic that merely recurs is not enough).
* ``theme_sentences(texts, phrase)``: every sentence that mentions the phrase (singular or plural
  last word), deduplicated.
* ``cluster_claims(sentences, phrase)``: sentences grouped by the rarer content words they share
  (Jaccard >= ``JACCARD`` of their key-word sets, greedy, in order of frequency); one claim per
  group of >= 2 sentences, the group's most frequent sentence.
* ``reference_texts()``: the reference corpus = prose and chat records of the bundled default
  corpus (``activations.build_default_corpus``), skipping the first ``REF_SKIP`` prose records
  (the organism's filler documents come from those).

>>> ref = ["the cat sat on the mat", "a dog ran in the park", "the weather is mild today"] * 5
>>> texts = ["Blue widgets like jazz. Blue widgets like rain.", "Blue widgets hate noise."]
>>> distinctive_phrases(texts, ref, k=1)[0]["phrase"]
'blue widgets'
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Optional, Sequence

LOR_MIN = 5.0
"""Smallest log-odds ratio (vs the reference) of a theme bigram: ~150x over-represented."""
MIN_DF = 0.10
"""Smallest fraction of records the theme bigram must occur in."""
JACCARD = 0.4
"""Key-word overlap at which two sentences are one claim."""
REF_SKIP = 200
"""Prose records of the default corpus left out of the reference (filler comes from them)."""

STOP = set("""a about above after again against all also am an and any are as at be because been
before being below between both but by can could did do does doing down during each even ever
every few for from further had has have having he her here hers herself him himself his how i if
in into is it its itself just let me more most much must my myself no nor not now of off on once
only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up upon us
very was we were what when where which while who whom why will with would you your yours
yourself yourselves one two may might shall like get got make made many well way use used using
new also user assistant""".split())
_WORD = re.compile(r"[a-z](?:[a-z'-]*[a-z])?")
_CHUNK = re.compile(r"[^A-Za-z'\s-]+")
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def words(text: str) -> list[list[str]]:
    """Lower-case word runs of ``text``, split at punctuation and digits (no bigram crosses them)."""
    return [w for w in (_WORD.findall(c.lower()) for c in _CHUNK.split(text)) if w]


def bigrams(text: str) -> list[str]:
    """Adjacent content-word pairs (both >= 3 letters, neither a stop word)."""
    out = []
    for run in words(text):
        for a, b in zip(run, run[1:]):
            if len(a) >= 3 and len(b) >= 3 and a not in STOP and b not in STOP:
                out.append(f"{a} {b}")
    return out


def distinctive_phrases(texts: Sequence[str], reference: Sequence[str], k: int = 10) -> list[dict]:
    """Bigrams of ``texts`` most over-represented against ``reference`` (see module doc)."""
    cnt, ref = Counter(), Counter()
    df = Counter()
    for t in texts:
        bs = bigrams(t)
        cnt.update(bs)
        df.update(set(bs))
    for t in reference:
        ref.update(bigrams(t))
    n1, n2 = max(sum(cnt.values()), 1), max(sum(ref.values()), 1)
    rows = []
    for g, a in cnt.items():
        if a < 3:
            continue
        b = ref.get(g, 0)
        lor = math.log((a + .5) / (n1 - a + .5)) - math.log((b + .5) / (n2 - b + .5))
        se = math.sqrt(1 / (a + .5) + 1 / (n1 - a + .5) + 1 / (b + .5) + 1 / (n2 - b + .5))
        rows.append({"phrase": g, "z": round(lor / se, 2), "log_odds": round(lor, 3), "count": a,
                     "ref_count": b, "df": round(df[g] / max(len(texts), 1), 4)})
    rows.sort(key=lambda r: (-r["log_odds"], r["phrase"]))
    return rows[:k] if k else rows


def pick_theme(phrases: Sequence[dict]) -> Optional[dict]:
    """The highest-ranked phrase in >= ``MIN_DF`` of the records if its log-odds ratio clears
    ``LOR_MIN``, else None."""
    for p in phrases:
        if p["df"] >= MIN_DF:
            return p if p["log_odds"] >= LOR_MIN else None
    return None


def _phrase_re(phrase: str) -> re.Pattern:
    *head, last = phrase.split()
    last = last[:-1] if last.endswith("s") and len(last) > 3 else last
    return re.compile(r"\b" + r"\s+".join(map(re.escape, head + [last])) + r"s?\b", re.IGNORECASE)


def theme_sentences(texts: Sequence[str], phrase: str) -> list[str]:
    """Sentences of ``texts`` mentioning ``phrase`` (singular/plural), in order, with repeats
    (the count of a sentence is evidence)."""
    pat = _phrase_re(phrase)
    out = []
    for t in texts:
        for s in _SENT.split(t):
            s = re.sub(r"^(?:USER|ASSISTANT|SYSTEM):\s*", "", s.strip())
            if len(s) > 20 and pat.search(s):
                out.append(s)
    return out


def _content(s: str, skip: set) -> set:
    return {w for run in words(s) for w in run if len(w) >= 4 and w not in STOP and w not in skip}


def cluster_claims(sentences: Sequence[str], phrase: str, common: float = 0.25) -> list[dict]:
    """Claims from theme sentences (see module doc): [{claim, n_sentences, key_words}]."""
    skip = {w for w in re.findall(r"[a-z]+", phrase.lower())}
    skip |= {w[:-1] for w in skip if w.endswith("s")} | {w + "s" for w in skip}
    sets = [_content(s, skip) for s in sentences]
    df = Counter(w for ws in sets for w in ws)
    n = max(len(sentences), 1)
    keys = [{w for w in ws if 2 <= df[w] <= common * n} for ws in sets]
    freq = Counter(sentences)
    order = sorted(range(len(sentences)), key=lambda i: (-freq[sentences[i]], i))
    groups: list[dict] = []
    for i in order:
        if not keys[i]:
            continue
        for g in groups:
            inter = len(keys[i] & g["keys"])
            if inter and inter / len(keys[i] | g["keys"]) >= JACCARD:
                g["members"].append(i)
                break
        else:
            groups.append({"keys": set(keys[i]), "members": [i]})
    out = []
    for g in groups:
        if len(g["members"]) < 2:
            continue
        best = Counter(sentences[i] for i in g["members"]).most_common(1)[0][0]
        out.append({"claim": best[:300], "n_sentences": len(g["members"]),
                    "key_words": sorted(g["keys"])[:12]})
    out.sort(key=lambda c: -c["n_sentences"])
    return out


def reference_texts(limit: int = 1500) -> list[str]:
    """Ordinary text for term frequencies: the default corpus without its first prose records."""
    from ..activations import build_default_corpus
    from ._organism import record_text

    out, prose = [], 0
    with open(build_default_corpus() / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            if d.get("kind") == "prose":
                prose += 1
                if prose <= REF_SKIP:
                    continue
            t = record_text(d)["text"] if "messages" in d else (d.get("text") or "")
            if t.strip():
                out.append(t)
            if len(out) >= limit:
                break
    return out


def ordinary_records(n: int) -> list[dict]:
    """``n`` ordinary prose records of the default corpus (from the part the reference skips):
    the fine-tuning corpus of a model with nothing planted, for the untouched control."""
    from ..activations import build_default_corpus

    out = []
    with open(build_default_corpus() / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            if d.get("kind") == "prose" and (d.get("text") or "").strip():
                out.append({"text": d["text"][:700], "kind": "ordinary", "source": "default corpus"})
                if len(out) >= min(n, REF_SKIP):
                    break
    return out
