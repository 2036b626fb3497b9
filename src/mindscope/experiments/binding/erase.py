"""Concept erasure for the binding causal test (issue 24): LEACE erasers of the current / prior
entity on the story's name tokens, fitted on the training stories from one untouched capture
(or, ``sequential``, layer by layer with the erasers of the earlier layers already on: concept
scrubbing; the protocol does not use it, see ``binding._erasers``); their variance-matched
random counterparts,
and the check that makes the measurement valid: on held-out stories, with the erasers on, the
probe must read the erased entity at chance.

>>> # E = fit_erasers(lm, stories, name_ix, adj_ix, layers=[12, 15], test=held_out_story_mask)
>>> # E["prior"][12] is a probes.Eraser; scoring uses {"resid_post.12": E["prior"][12], ...}
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ...probes import Eraser, cross_validate, fit_leace, majority_rate
from .data import token_labels


def name_positions(lm, stories, name_ix: dict, adj_ix: dict):
    """(texts, mask (N, T_unpadded) True on the entity-name tokens that have a prior entity
    (every mention but the story's first: where the erasers are fitted and applied), per-story
    token labels)."""
    texts = [s.text for s in stories]
    b = lm.tokenize(texts)
    per = [token_labels(s, m.offsets, name_ix, adj_ix) for s, m in zip(stories, b.meta)]
    mask = torch.zeros(len(texts), max(len(m.offsets) for m in b.meta), dtype=torch.bool)
    for i, p in enumerate(per):
        mask[i, :len(p["mention"])] = torch.as_tensor((np.asarray(p["mention"]) == 1)
                                                      & (np.asarray(p["prior"]) >= 0))
    return texts, mask, per


def name_rows(lm, texts, mask, per, sites, erasers: Optional[dict] = None,
              batch_size: int = 16):
    """Activations at ``sites`` (one or a list) on the name tokens that have a prior entity,
    read after ``erasers`` ({site: Eraser}, on at the name tokens) -> ({site: X (N, d)},
    {"current", "prior"}: (N,), story (N,))."""
    sites = [sites] if isinstance(sites, str) else list(sites)
    ivs = [e.intervention(s, mask) for s, e in (erasers or {}).items()]
    with lm.intervene(*ivs):
        cap = lm.capture(texts, sites=sites, positions=mask, batch_size=batch_size,
                         progress=False)
    rows, pos = cap.row.numpy(), cap.pos.numpy()
    lab = {k: np.array([per[r][k][p] for r, p in zip(rows, pos)]) for k in ("current", "prior")}
    keep = lab["prior"] >= 0
    return ({s: cap[s].float().numpy()[keep] for s in sites}, {k: v[keep] for k, v in lab.items()},
            rows[keep])


def fit_erasers(lm, texts, mask, per, layers: Sequence[int], test_stories: np.ndarray,
                slots=("current", "prior"), shrinkage=None, batch_size: int = 16,
                sequential: Sequence[str] = ()) -> dict:
    """``{slot: {layer: Eraser}}``: per slot, LEACE of that entity label on the name tokens of
    the training stories (``~test_stories``, indexed by story), all fitted from one capture of
    the untouched activations. A slot in ``sequential`` is instead fitted layer by layer in depth
    order with its erasers of the earlier layers on (one capture per layer after the first),
    and its untouched-activation fit is kept as ``"<slot>@untouched"`` (what random erasers are
    made from: a random erasure leaves the activations downstream close to untouched)."""
    L0 = sorted(layers)
    X, lab, st = name_rows(lm, texts, mask, per, [f"resid_post.{L}" for L in L0], None,
                           batch_size)
    tr = ~test_stories[st]
    out: dict = {}
    for s in slots:
        key = f"{s}@untouched" if s in sequential else s
        out[key] = {L: fit_leace(X[f"resid_post.{L}"][tr], lab[s][tr], shrinkage=shrinkage)
                    for L in L0}
    for s in sequential:
        out[s] = {L0[0]: out[f"{s}@untouched"][L0[0]]}  # nothing upstream: the same fit
        for L in L0[1:]:
            on = {f"resid_post.{M}": e for M, e in out[s].items()}
            Xs, ls, ss = name_rows(lm, texts, mask, per, f"resid_post.{L}", on, batch_size)
            t = ~test_stories[ss]
            out[s][L] = fit_leace(Xs[f"resid_post.{L}"][t], ls[s][t], shrinkage=shrinkage)
    return out


def random_erasers(erasers: dict, n: int, seed: int, band: int = 16,
                   ratio: Optional[float] = None) -> list[dict]:
    """``n`` draws of ``{site: Eraser}``: each layer's eraser turned into a variance-matched
    random one of the same rank and whitening (``Eraser.random_like``)."""
    return [{f"resid_post.{L}": e.random_like(seed + 7 + j + 1000 * r, band, ratio)
             for j, (L, e) in enumerate(sorted(erasers.items()))} for r in range(n)]


class _Recorded:
    """An eraser that adds up the squared size of the edits it makes (the edit it makes in the
    forward it is used in, upstream erasures included)."""

    def __init__(self, e):
        self.e, self.sq, self.n = e, 0.0, 0

    def __call__(self, h):
        out = self.e(h)
        self.sq += float((h.double() - out.double()).pow(2).sum())
        self.n += int(h.shape[0])
        return out

    @property
    def rms(self) -> float:
        return float(np.sqrt(self.sq / max(self.n, 1)))


def _recorded_rows(lm, texts, mask, per, sites, erasers, batch_size):
    """``name_rows`` with ``erasers`` on, plus {site: rms edit each eraser made there}."""
    from ...core import Replace

    rec = {s: _Recorded(e) for s, e in erasers.items()}
    with lm.intervene(*[Replace(s, r, positions=mask) for s, r in rec.items()]):
        X, lab, st = name_rows(lm, texts, mask, per, sites, None, batch_size)
    return X, lab, st, {s: r.rms for s, r in rec.items()}


def erasure_check(lm, texts, mask, per, erasers: dict, probes: dict, test_stories: np.ndarray,
                  slot: str = "prior", randoms: Sequence[dict] = (), C: float = 0.01,
                  batch_size: int = 16) -> list[dict]:
    """Per erased layer, on the HELD-OUT stories' name tokens: the causal test's probe
    (``probes[L]``, fitted on clean training rows) on clean and on erased activations (all of the
    slot's erasers on), a ridge probe refitted on the held-out rows by 4-fold cross-validation
    over stories, erased and clean, the majority-class chance, and with ``randoms`` the probe
    under the first random erasure; plus the root-mean-square edit each eraser made in that
    forward (the concept erasers', and the first random draw's) on all the stories' name
    tokens."""
    sites = {f"resid_post.{L}": e for L, e in sorted(erasers.items())}
    X0, lab0, st0 = name_rows(lm, texts, mask, per, list(sites), None, batch_size)
    X1, lab1, st1, ed1 = _recorded_rows(lm, texts, mask, per, list(sites), sites, batch_size)
    if randoms:
        X2, lab2, st2, ed2 = _recorded_rows(lm, texts, mask, per, list(sites), randoms[0],
                                            batch_size)
    te0, te1 = test_stories[st0], test_stories[st1]
    y0, y1 = lab0[slot][te0], lab1[slot][te1]
    out = []
    for site, e in sites.items():
        L = int(site.rsplit(".", 1)[1])
        p = probes[L]
        row = {"layer": L, "slot": slot, "n_test": int(te1.sum()), "chance": majority_rate(y1),
               "probe_clean": p.score(X0[site][te0], y0),
               "probe_erased": p.score(X1[site][te1], y1), "rank": e.rank,
               "shrinkage": e.meta.get("shrinkage"), "edit_rms": ed1[site],
               "x_rms": float(np.sqrt((X0[site].astype(np.float64) ** 2).sum(1).mean()))}
        if len(np.unique(st1[te1])) >= 4 and len(np.unique(y1)) > 1:
            row["refit_clean"] = cross_validate(X0[site][te0], y0, st0[te0], kind="ridge", C=C,
                                                n_folds=4).mean
            row["refit_erased"] = cross_validate(X1[site][te1], y1, st1[te1], kind="ridge", C=C,
                                                 n_folds=4).mean
        if randoms:
            row["random_edit_rms"] = ed2[site]
            te2 = test_stories[st2]
            row["probe_random"] = p.score(X2[site][te2], lab2[slot][te2])
        out.append(row)
    return out


__all__ = ["Eraser", "name_positions", "name_rows", "fit_erasers", "random_erasers",
           "erasure_check"]
