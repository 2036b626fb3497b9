"""Automated interpretation: an explainer writes a short explanation of each latent from its top
and quantile examples; scorers test it on held-out examples.

Examples of latent j are split: the explainer sees the top ``n_explain`` examples and the first
example of each quantile group; the rest (held-out positives) and as many background contexts
in which j never fires (negatives) go to the scorers:

- **detection**: does the judge tell activating from non-activating contexts?
- **fuzzing**: examples with tokens marked ``<<like this>>`` - the truly activating tokens, or
  as many random non-activating tokens; does the judge tell correct marks from wrong ones?
- **specificity** (Scaling Monosemanticity): a 0-3 rating of how clearly each example at each
  activation level (quantile groups, then top) shows the explained concept.

Detection and fuzzing report accuracy, precision, recall, F1, ROC AUC (from the judge's 0/1,
or the offline baseline's graded score) with standard errors (accuracy: binomial; F1 and
AUC: bootstrap). Every row records the judge. The offline judge is a deterministic baseline:
the explanation is the tokens most over-represented at activating positions against the
background contexts; an example is predicted activating when it contains one of them.

>>> # explain(fs, judge="offline"); score(fs, judge="offline")
>>> # fs.query("select scorer, avg(accuracy) from scores group by scorer")
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from ._analyze import write_parquet
from ..judges import FeatureJudge, make_feature_judge

log = logging.getLogger(__name__)

EXPLAIN_PROMPT = """You are helping to understand one feature of a language model's internals.
Below are text excerpts in which the feature is active. In each excerpt the tokens on which
it fires are wrapped in << >>, and after each excerpt the strongest activations are listed
as (token, activation) pairs on a 0-10 scale. Some excerpts are strong examples, some weak.
{logits}
Look first at which tokens are marked, then at the words around them. Say what the marked
tokens have in common - a word, a kind of word, a topic, a position in a phrase or a piece of
syntax. Be short and concrete (at most 15 words), with no preamble about "the feature".
Finish with one line of the form:
[EXPLANATION]: <your explanation>

{examples}"""

DETECT_PROMPT = """A feature of a language model is described as:
"{explanation}"
For each numbered excerpt below, decide whether the feature is active somewhere in it.
Reply with only a JSON list of {n} numbers, 1 (active) or 0 (not active), in excerpt order.

{examples}"""

FUZZ_PROMPT = """A feature of a language model is described as:
"{explanation}"
In each numbered excerpt below some tokens are wrapped in << >>. Decide whether the marked
tokens are ones on which this feature would fire (1) or were marked at random (0).
Reply with only a JSON list of {n} numbers, 1 or 0, in excerpt order.

{examples}"""

SPECIFICITY_PROMPT = """A feature of a language model is described as:
"{explanation}"
Rate how well each numbered excerpt below (the token of interest is wrapped in << >>) shows
this description: 0 = unrelated, 1 = barely related, 2 = loosely related,
3 = a clear instance. Reply with only a JSON list of {n} numbers (0-3), in excerpt order.

{examples}"""


def _norm(s: str) -> str:
    return s.strip().lower()


def highlight(tokens: Sequence[str], marks: Sequence[bool]) -> str:
    """Join tokens, wrapping each run of marked tokens in << >>."""
    out, open_ = [], False
    for t, m in zip(tokens, marks):
        if m and not open_:
            out.append("<<")
            open_ = True
        if not m and open_:
            out.append(">>")
            open_ = False
        out.append(t)
    if open_:
        out.append(">>")
    return "".join(out).replace("\n", "\\n")


def parse_list(text: Optional[str], n: int, lo: int = 0, hi: int = 1) -> Optional[list[int]]:
    """The last JSON list of ``n`` integers in [lo, hi] in a reply, else None (malformed)."""
    for m in reversed(list(re.finditer(r"\[[^\[\]]*\]", text or ""))):
        try:
            v = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) and
                                                       not isinstance(x, bool) for x in v):
            v = [int(round(x)) for x in v]
            if all(lo <= x <= hi for x in v):
                return v
    return None


def parse_explanation(text: Optional[str]) -> Optional[str]:
    m = re.findall(r"\[EXPLANATION\]\s*:?\s*(.+)", text or "", flags=re.IGNORECASE)
    if m:
        e = m[-1].strip().strip('"').strip()
        return e[:300] or None
    return None


# ---- metrics ------------------------------------------------------------------------------

def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count one half); nan when one class is missing."""
    y, score = np.asarray(y).astype(bool), np.asarray(score, dtype=float)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inv]  # average ranks, 1-based
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def _prf(y, p):
    tp = int((y & p).sum())
    prec = tp / max(int(p.sum()), 1)
    rec = tp / max(int(y.sum()), 1)
    f1 = 2 * tp / max(int(p.sum()) + int(y.sum()), 1)
    return prec, rec, f1


def binary_metrics(y_true, y_pred, y_score=None, n_boot: int = 100, seed: int = 0) -> dict:
    """accuracy, precision, recall, f1, auc and their standard errors (accuracy binomial,
    f1/auc bootstrap with ``n_boot`` resamples)."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    s = np.asarray(y_score if y_score is not None else p, dtype=float)
    n = len(y)
    if n == 0:
        return {"n": 0}
    acc = float((y == p).mean())
    prec, rec, f1 = _prf(y, p)
    auc = roc_auc(y, s)
    rng = np.random.default_rng(seed)
    f1s, aucs = [], []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        f1s.append(_prf(y[i], p[i])[2])
        a = roc_auc(y[i], s[i])
        if not math.isnan(a):
            aucs.append(a)
    return {"n": n, "accuracy": acc, "precision": prec, "recall": rec, "f1": f1, "auc": auc,
            "accuracy_se": math.sqrt(acc * (1 - acc) / n), "f1_se": float(np.std(f1s)),
            "auc_se": float(np.std(aucs)) if aucs else float("nan")}


# ---- data for one latent ------------------------------------------------------------------

class _Data:
    """Examples of every latent and the background contexts, read once from a FeatureSet."""

    def __init__(self, fs, n_explain: int = 10):
        self.fs, self.n_explain = fs, n_explain
        self.ex: dict[int, list] = {}
        for r in fs.query("select latent, kind, quantile, rank, value, token_strs, acts, center "
                          "from examples order by latent, kind, quantile, rank"):
            self.ex.setdefault(r["latent"], []).append(r)
        self.bg = fs.query("select bg, token_strs, center from background order by bg") \
            if fs.has("background") else []
        self.bg_lat: dict[int, set] = {}
        if fs.has("background_codes"):
            for r in fs.query("select bg, list(distinct latent) l from background_codes group by bg"):
                self.bg_lat[r["bg"]] = set(r["l"])
        c = Counter(_norm(t) for b in self.bg for t in b["token_strs"])
        self.bg_count, self.bg_total = c, max(sum(c.values()), 1)

    def split(self, j: int):
        ex = self.ex.get(j, [])
        top = [e for e in ex if e["kind"] == "top"]
        qs = [e for e in ex if e["kind"] == "quantile"]
        shown = top[:self.n_explain] + [e for e in qs if e["rank"] == 0]
        held = top[self.n_explain:] + [e for e in qs if e["rank"] > 0]
        return shown, held

    def negatives(self, j: int, n: int, seed: int = 0) -> list:
        cand = [b for b in self.bg if j not in self.bg_lat.get(b["bg"], set())]
        rng = np.random.default_rng([seed, j])
        idx = rng.permutation(len(cand))[:n]
        return [cand[i] for i in sorted(idx)]


def _marks(e: dict, frac: float = 0.3) -> list[bool]:
    a = np.asarray(e["acts"], dtype=float)
    mx = a.max() if len(a) else 0.0
    return [bool(x > 0 and x >= frac * mx) for x in a]


def offline_explanation(shown: list, data: _Data, n_tokens: int = 3) -> tuple[str, list[str]]:
    """Tokens most over-represented at activating positions vs the background."""
    act = Counter()
    for e in shown:
        for t, m in zip(e["token_strs"], _marks(e)):
            if m and _norm(t):
                act[_norm(t)] += 1
    n_act = max(sum(act.values()), 1)
    scored = []
    for t, c in act.items():
        p_bg = (data.bg_count.get(t, 0) + 1) / (data.bg_total + 1)
        scored.append((c / n_act * math.log((c / n_act) / p_bg), t))
    toks = [t for s, t in sorted(scored, reverse=True)[:n_tokens] if s > 0] or \
        [t for _, t in sorted(scored, reverse=True)[:1]]
    if not toks:
        return "no activating tokens seen", []
    return "fires on tokens " + ", ".join(f'"{t}"' for t in toks), toks


def _overlap(tokens: Sequence[str], expl_tokens: set, marks=None) -> float:
    """Fraction of explanation tokens present (among marked tokens if ``marks``)."""
    if not expl_tokens:
        return 0.0
    present = {_norm(t) for i, t in enumerate(tokens) if marks is None or marks[i]}
    return len(present & expl_tokens) / len(expl_tokens)


# ---- explain ------------------------------------------------------------------------------

def _explain_prompt(shown: list, logits: list[str]) -> str:
    blocks = []
    for i, e in enumerate(shown):
        a = np.asarray(e["acts"], dtype=float)
        mx = max(float(a.max()) if len(a) else 0.0, 1e-9)
        pairs = [(t, int(round(10 * x / mx))) for t, x in zip(e["token_strs"], a) if x > 0]
        pairs = sorted(pairs, key=lambda p: -p[1])[:4]
        blocks.append(f"Example {i + 1}: {highlight(e['token_strs'], _marks(e))}\n"
                      f"Activations: {', '.join(f'({t!r}, {v})' for t, v in pairs)}")
    lg = (f"Tokens this feature makes more likely next: {', '.join(repr(t) for t in logits)}\n"
          if logits else "")
    return EXPLAIN_PROMPT.format(logits=lg, examples="\n".join(blocks))


def explain(fs, judge="offline", latents: Optional[Sequence[int]] = None, n_explain: int = 10,
            workers: int = 4, progress: bool = True, lm=None, **judge_kw) -> list[dict]:
    """Write explanations of ``latents`` (default: every latent that fired) into
    explanations.parquet (rows for the same latent are replaced). Returns the new rows."""
    import pyarrow as pa

    j = make_feature_judge(judge, lm=lm, **judge_kw)
    data = _Data(fs, n_explain)
    if latents is None:
        latents = [r["latent"] for r in fs.query("select latent from features where count > 0 "
                                                 "order by latent")]
    logits: dict = {}
    if fs.has("logits") and not j.offline:
        for r in fs.query("select latent, list(token_str order by rank) t from logits where "
                          "kind = 'promoted' group by latent"):
            logits[r["latent"]] = r["t"][:8]

    def one(lat: int) -> dict:
        shown, _ = data.split(lat)
        row = {"latent": int(lat), "judge": j.name, "n_examples": len(shown), "error": None,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if j.offline:
            text, toks = offline_explanation(shown, data)
            return {**row, "explanation": text, "tokens": toks}
        rep = j.ask(_explain_prompt(shown, logits.get(lat, [])))
        text = parse_explanation(rep.text) if rep.text is not None else None
        if rep.text is not None and text is None:
            j.count("malformed")
        err = rep.error or (None if text else "malformed")
        return {**row, "explanation": text, "error": err,
                "tokens": sorted({_norm(t) for t in re.findall(r"[\w']+", text or "")})}

    rows = _map(one, list(latents), j, workers, progress, "explain")
    _replace(fs, "explanations", rows, ["latent"],
             schema=pa.schema([("latent", pa.int32()), ("explanation", pa.string()),
                               ("tokens", pa.list_(pa.string())), ("judge", pa.string()),
                               ("n_examples", pa.int32()), ("error", pa.string()),
                               ("created", pa.string())]))
    log.info("explain: judge %s stats %s", j.name, j.stats)
    return rows


def _map(fn, items: list, judge: FeatureJudge, workers: int, progress: bool, desc: str) -> list:
    bar = tqdm(total=len(items), desc=f"{desc} ({judge.name})", disable=not progress)
    if judge.concurrent and workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            futs = [ex.submit(fn, x) for x in items]
            for f in futs:
                f.add_done_callback(lambda _: bar.update())
            out = [f.result() for f in futs]
    else:
        out = []
        for x in items:
            out.append(fn(x))
            bar.update()
    bar.close()
    return out


def _replace(fs, table: str, rows: list[dict], keys: list[str], schema=None) -> None:
    """Write ``rows`` into table, replacing existing rows with the same key columns."""
    import pyarrow as pa

    old = fs.query(f"select * from {table}") if fs.has(table) else []
    new_keys = {tuple(r[k] for k in keys) for r in rows}
    keep = [r for r in old if tuple(r[k] for k in keys) not in new_keys]
    allr = sorted(keep + rows, key=lambda r: tuple(r[k] for k in keys))
    cols = list(schema.names) if schema is not None else list(allr[0]) if allr else []
    t = pa.table({c: [r.get(c) for r in allr] for c in cols}, schema=schema)
    write_parquet(t, fs.path / f"{table}.parquet")


# ---- score --------------------------------------------------------------------------------

def _ask_lists(j: FeatureJudge, template: str, explanation: str, texts: list[str], hi: int,
               batch: int) -> tuple[list[Optional[int]], int]:
    """Ask the judge about ``texts`` in batches; None for items of failed/malformed batches."""
    out: list[Optional[int]] = []
    failed = 0
    for a in range(0, len(texts), batch):
        chunk = texts[a:a + batch]
        ex = "\n".join(f"Excerpt {i + 1}: {t}" for i, t in enumerate(chunk))
        rep = j.ask(template.format(explanation=explanation, n=len(chunk), examples=ex))
        v = parse_list(rep.text, len(chunk), 0, hi) if rep.text is not None else None
        if rep.text is not None and v is None:
            j.count("malformed")
        if v is None:
            failed += len(chunk)
            out += [None] * len(chunk)
        else:
            out += v
    return out, failed


SCORERS = ("detection", "fuzzing", "specificity")


def decisions(judge: FeatureJudge, scorer: str, explanation: str, tokens: Sequence[str],
              excerpts: Sequence[tuple], batch: int = 5) -> tuple[list, np.ndarray]:
    """The per-excerpt decisions of ``score``'s detection or fuzzing scorer: ``excerpts`` are
    ``(token_strs, marks)`` pairs (marks None for detection). Offline judge: 1 when the
    excerpt's tokens (its marked tokens for fuzzing) contain one of the explanation's
    ``tokens``; an LM judge is asked ``DETECT_PROMPT`` / ``FUZZ_PROMPT`` about ``batch``
    excerpts at a time (None where its reply could not be read). Returns (decisions, the
    offline overlap score or the decisions as floats)."""
    if scorer not in ("detection", "fuzzing"):
        raise ValueError(f"decisions: scorer must be detection or fuzzing, got {scorer!r}")
    toks = {_norm(t) for t in tokens}
    if judge.offline:
        s = np.array([_overlap(t, toks, m if scorer == "fuzzing" else None) for t, m in excerpts])
        return [int(v > 0) for v in s], s
    texts = (["".join(t).replace("\n", "\\n") for t, _ in excerpts] if scorer == "detection"
             else [highlight(t, m) for t, m in excerpts])
    got, _ = _ask_lists(judge, DETECT_PROMPT if scorer == "detection" else FUZZ_PROMPT,
                        explanation, texts, 1, batch)
    return got, np.array([np.nan if g is None else float(g) for g in got])


def _judged(j, scorer, explanation, toks, excerpts, y, batch):
    """(labels, predictions, scores, n_failed) with unreadable LM replies dropped."""
    got, s = decisions(j, scorer, explanation, toks, excerpts, batch)
    ok = np.array([g is not None for g in got], bool)
    pred = np.array([g for g in got if g is not None], int)
    return y[ok], pred, (s if j.offline else s[ok]), int((~ok).sum())


def score(fs, judge="offline", latents: Optional[Sequence[int]] = None,
          scorers: Sequence[str] = SCORERS, n_explain: int = 10, batch: int = 5, seed: int = 0,
          workers: int = 4, progress: bool = True, lm=None, **judge_kw) -> list[dict]:
    """Score the explanations of ``latents`` (default: every explained latent) with each scorer;
    rows go to scores.parquet (same latent/scorer/judge replaced). Returns the new rows."""
    bad = [s for s in scorers if s not in SCORERS]
    if bad:
        raise ValueError(f"unknown scorer(s) {bad}; choose from {SCORERS}")
    if not fs.has("explanations"):
        raise FileNotFoundError(f"{fs.path}: no explanations yet; run explain() first")
    j = make_feature_judge(judge, lm=lm, **judge_kw)
    data = _Data(fs, n_explain)
    expl = {r["latent"]: r for r in fs.query("select * from explanations where explanation "
                                             "is not null")}
    latents = sorted(expl) if latents is None else [x for x in latents if x in expl]

    def one(lat: int) -> list[dict]:
        e = expl[lat]
        toks = {_norm(t) for t in (e["tokens"] or [])}
        _, held = data.split(lat)
        neg = data.negatives(lat, max(len(held), 1), seed)
        base = {"latent": int(lat), "judge": j.name, "explanation": e["explanation"],
                "explained_by": e["judge"], "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        rows = []
        rng = np.random.default_rng([seed, lat])
        if "detection" in scorers and held:
            items = [(x["token_strs"], 1) for x in held] + [(x["token_strs"], 0) for x in neg]
            items = [items[i] for i in rng.permutation(len(items))]
            y = np.array([lab for _, lab in items])
            y, pred, s, failed = _judged(j, "detection", e["explanation"], toks,
                                         [(t, None) for t, _ in items], y, batch)
            rows.append({**base, "scorer": "detection", "n_failed": failed,
                         **binary_metrics(y, pred, s, seed=seed)})
        if "fuzzing" in scorers and held:
            items = []
            for x in held:
                m = _marks(x)
                zero = [i for i, a in enumerate(x["acts"]) if a <= 0]
                k = max(sum(m), 1)
                if len(zero) >= k:
                    pick = set(rng.choice(zero, k, replace=False).tolist())
                    items.append((x["token_strs"], [i in pick for i in range(len(m))], 0))
                items.append((x["token_strs"], m, 1))
            items = [items[i] for i in rng.permutation(len(items))]
            y = np.array([lab for *_, lab in items])
            y, pred, s, failed = _judged(j, "fuzzing", e["explanation"], toks,
                                         [(t, m) for t, m, _ in items], y, batch)
            rows.append({**base, "scorer": "fuzzing", "n_failed": failed,
                         **binary_metrics(y, pred, s, seed=seed)})
        if "specificity" in scorers:
            ex = data.ex.get(lat, [])
            levels = sorted({x["quantile"] for x in ex if x["kind"] == "quantile"})
            groups = [[x for x in ex if x["kind"] == "quantile" and x["quantile"] == q]
                      for q in levels] + [[x for x in ex if x["kind"] == "top"][:n_explain]]
            flat = [(gi, x) for gi, g in enumerate(groups) for x in g]
            if j.offline:
                ratings = []
                for _, x in flat:
                    m = _marks(x)
                    c = x["center"]
                    ratings.append(3 if c < len(x["token_strs"]) and _norm(x["token_strs"][c]) in toks
                                   else 2 if _overlap(x["token_strs"], toks, m) > 0
                                   else 1 if _overlap(x["token_strs"], toks) > 0 else 0)
                failed = 0
            else:
                texts = [highlight(x["token_strs"], [i == x["center"] for i in range(len(x["token_strs"]))])
                         for _, x in flat]
                ratings, failed = _ask_lists(j, SPECIFICITY_PROMPT, e["explanation"], texts, 3, batch)
            by = [[r for (gi, _), r in zip(flat, ratings) if gi == g and r is not None]
                  for g in range(len(groups))]
            allr = [r for r in ratings if r is not None]
            rows.append({**base, "scorer": "specificity", "n_failed": failed, "n": len(allr),
                         "mean_rating": float(np.mean(allr)) if allr else None,
                         "rating_se": float(np.std(allr) / math.sqrt(len(allr))) if allr else None,
                         "rating_by_level": [float(np.mean(b)) if b else None for b in by]})
        return rows

    out = [r for rs in _map(one, latents, j, workers, progress, "score") for r in rs]
    _replace(fs, "scores", out, ["latent", "scorer", "judge"], schema=_scores_schema())
    log.info("score: judge %s stats %s", j.name, j.stats)
    return out


def _scores_schema():
    import pyarrow as pa

    f = pa.float64()
    return pa.schema([("latent", pa.int32()), ("scorer", pa.string()), ("judge", pa.string()),
                      ("n", pa.int64()), ("n_failed", pa.int64()), ("accuracy", f),
                      ("precision", f), ("recall", f), ("f1", f), ("auc", f),
                      ("accuracy_se", f), ("f1_se", f), ("auc_se", f), ("mean_rating", f),
                      ("rating_se", f), ("rating_by_level", pa.list_(f)),
                      ("explanation", pa.string()), ("explained_by", pa.string()),
                      ("created", pa.string())])
