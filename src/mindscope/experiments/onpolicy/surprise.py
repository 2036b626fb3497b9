"""Protocol 2, input surprise: ridge probes for s_t = -log p(x_t | x_<t) from the residual stream
at position t (every layer, held-out R^2 by prompt), the probe direction as a ``Vector``, and
steering along it at the response positions of on-policy text: the change in next-token entropy
per dose (dose = the change in the probe's predicted surprisal, in nats) against random
directions of the same norm.

Baselines reported with the R^2 curve: a Hewitt-Liang control task (a random value per token
type: how much a probe can memorise token identity) and a token-identity predictor (the mean
train surprisal of the token type), since rare tokens are surprising wherever they appear.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import torch

from ...core import Add
from ...core import Vector, data_hash
from ...probes import LayerSweep, layer_sweep
from ...runs import bootstrap_ci
from ...steering import covariance_directions  # variance-matched random directions (shared)
from .core import Seq, TokenStats, bootstrap_mean, token_stats

log = logging.getLogger(__name__)


def token_identity_r2(token_ids: np.ndarray, y: np.ndarray, test: np.ndarray) -> float:
    """Held-out R^2 of predicting y by the train mean of y for the row's token type."""
    tr = ~test
    means: dict[int, list] = {}
    for t, v in zip(token_ids[tr], y[tr]):
        means.setdefault(int(t), []).append(v)
    g = float(y[tr].mean())
    pred = np.array([np.mean(means[int(t)]) if int(t) in means else g for t in token_ids[test]])
    yt = y[test]
    return 1.0 - float(((yt - pred) ** 2).sum()) / max(float(((yt - yt.mean()) ** 2).sum()), 1e-30)


def probe_data(seqs: Sequence[Seq], stats: TokenStats, with_prev: bool = False):
    """Rows = response positions of every sequence: acts {site: (N, d)}, y (N,), groups, ids
    (and, with ``with_prev``, the entropy at t-1 per row). Groups follow the SOURCE of the
    response tokens (``Seq.source``), not the prompt: a shuffled sequence carries another
    prompt's response, and grouping it by its prompt would put that token sequence on both
    sides of the held-out split."""
    y = np.concatenate(stats.surprisal)
    groups = np.concatenate([np.full(s.n_resp, s.source) for s in seqs])
    ids = np.concatenate(stats.token_ids)
    acts = {site: torch.cat(v) for site, v in stats.acts.items()}
    ok = np.isfinite(y)
    out = ({s: a[torch.from_numpy(ok)] for s, a in acts.items()}, y[ok], groups[ok], ids[ok])
    if with_prev:
        prev = (np.concatenate(stats.prev_entropy) if stats.prev_entropy
                else np.full(len(y), np.nan))
        out = out + (prev[ok],)
    return out


def _ols_r2(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray) -> float:
    """Held-out R^2 of least squares with an intercept."""
    A = np.c_[Xtr, np.ones(len(Xtr))]
    coef = np.linalg.lstsq(A, ytr, rcond=None)[0]
    pred = np.c_[Xte, np.ones(len(Xte))] @ coef
    return 1.0 - float(((yte - pred) ** 2).sum()) / max(float(((yte - yte.mean()) ** 2).sum()), 1e-30)


def beyond_entropy(probe_pred: np.ndarray, prev_entropy: np.ndarray, y: np.ndarray,
                   test: np.ndarray) -> dict:
    """Does the probe know more than the entropy at t-1 (= the expected surprisal of token t)?
    Held-out R^2 of y on H(t-1) alone, on [probe, H(t-1)], and the partial R^2 the probe adds:
    (R2_full - R2_H) / (1 - R2_H). Fitted on the train rows, scored on the test rows."""
    tr = ~test
    H = prev_entropy[:, None]
    r2_h = _ols_r2(H[tr], y[tr], H[test], y[test])
    F = np.c_[probe_pred, prev_entropy]
    r2_full = _ols_r2(F[tr], y[tr], F[test], y[test])
    return {"r2_prev_entropy": r2_h, "r2_probe_plus_prev_entropy": r2_full,
            "r2_added_by_probe": r2_full - r2_h,
            "partial_r2": (r2_full - r2_h) / max(1.0 - r2_h, 1e-12)}


def surprise_probes(seqs: Sequence[Seq], stats: TokenStats, C: float = 0.01, seed: int = 0,
                    test_size: float = 0.25) -> tuple[dict, LayerSweep]:
    """One ridge probe per site (held-out prompts), with the control task and token baseline."""
    acts, y, groups, ids, prev = probe_data(seqs, stats, with_prev=True)
    if len(np.unique(groups)) < 2:
        raise ValueError("the surprise probe needs at least 2 prompts (held out by prompt)")
    sw = layer_sweep(acts, y, groups=groups, kind="ridge", C=C, control="task", token_ids=ids,
                     test_size=test_size, seed=seed)
    test = sw.evals[sw.sites[0]].test_mask
    res = {"sites": sw.sites, "r2_test": [sw.evals[s].test_score for s in sw.sites],
           "r2_train": [sw.evals[s].train_score for s in sw.sites],
           "r2_control_task": [sw.control.get(s, float("nan")) for s in sw.sites],
           "r2_token_identity": token_identity_r2(ids, y, test), "n_rows": int(len(y)),
           "n_test": int(test.sum()), "surprisal_mean": float(y.mean()),
           "surprisal_sd": float(y.std()), "C": C, "best_site": sw.best_site,
           "groups": "source of the response tokens"}
    if np.isfinite(prev).all():
        res["beyond_entropy"] = {s: beyond_entropy(sw.evals[s].probe.predict(acts[s].numpy()),
                                                   prev, y, test) for s in sw.sites}
    return res, sw


def entropy_readout(stats: TokenStats, site: str, seqs: Sequence[Seq], C: float = 0.01,
                    seed: int = 0) -> torch.Tensor:
    """A ridge readout of next-token entropy at ``site`` (same rows and split as the surprise
    probe): its weight (d,) in raw activation space."""
    from ...probes import evaluate_probe

    X = torch.cat(stats.acts[site]).numpy()
    y = np.concatenate(stats.entropy)
    groups = np.concatenate([np.full(s.n_resp, s.source) for s in seqs])
    e = evaluate_probe(X, y, groups=groups, kind="ridge", C=C, seed=seed)
    return e.probe.weight[0].float()


def orthogonal_to(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """w minus its component along h (both (d,))."""
    hu = h / h.norm().clamp(min=1e-12)
    return w - (w @ hu) * hu


def pick_steer_site(lm, sw: LayerSweep, site: Optional[str]) -> str:
    """``site`` if given, else the best held-out R^2 among the middle half of the layers."""
    if site:
        if site not in sw.evals:
            raise ValueError(f"steer_site {site!r} was not probed; probed: {sw.sites[0]}..{sw.sites[-1]}")
        return site
    mid = [s for s in sw.sites if lm.n_layers / 4 <= int(s.split(".")[-1]) <= 3 * lm.n_layers / 4]
    return max(mid or sw.sites, key=lambda s: sw.evals[s].test_score)


def surprise_vector(lm, sw: LayerSweep, site: str, seqs: Sequence[Seq]) -> Vector:
    """The probe's weight (raw activation space) at ``site`` as a unit ``Vector``; ``meta`` keeps
    the raw weight norm (nats of predicted surprisal per unit of activation along it)."""
    p = sw.evals[site].probe
    w = p.weight[0].float()  # (d,)
    return Vector(w / w.norm(), site=site, model=lm.name, method="probe",
                  data_hash=data_hash([s.ids for s in seqs]), normalisation="unit",
                  meta={"target": "input surprisal -log p(x_t|x_<t) (nats)",
                        "weight_norm": float(w.norm()), "bias": float(p.bias[0]),
                        "r2_test": sw.evals[site].test_score})


def steer_dose_response(lm, vec: Vector, seqs: Sequence[Seq], doses: Sequence[float],
                        batch_size: int = 8, seed: int = 0, n_boot: int = 1000,
                        resid_norm: Optional[float] = None, orth: Optional[Vector] = None,
                        rand: Optional[torch.Tensor] = None) -> dict:
    """Add ``dose / |w| * u`` (u = probe direction: the probe's prediction moves by ``dose`` nats)
    at every response position of ``seqs``. ``orth``: the probe's component orthogonal to the
    entropy readout (unit, ``meta['weight_norm']`` = |w_perp|), stepped so the probe still moves
    by ``dose`` nats while the entropy readout does not move (to first order). Control: the
    probe step's norm along a random direction per text, drawn variance-matched (``rand``
    (n, d) from ``covariance_directions``; isotropic if None). Entropy change vs dose 0, per
    text, averaged over response positions."""
    doses = sorted(set(float(d) for d in doses) | {0.0})
    wn = float(vec.meta["weight_norm"])
    if rand is None:
        g = torch.Generator().manual_seed(seed)
        rand = torch.randn(len(seqs), vec.d, generator=g)
        rand = rand / rand.norm(dim=1, keepdim=True)  # (n, d) one random unit direction per text
    kinds = ("probe", "orth", "random") if orth is not None else ("probe", "random")
    own_norm = {"probe": wn, "random": wn,
                "orth": float(orth.meta["weight_norm"]) if orth is not None else wn}
    rows, V, S, key = [], [], [], []
    for i, s in enumerate(seqs):
        for dz in doses:
            for kind in (("probe",) if dz == 0 else kinds):
                rows.append(s)
                V.append(vec.data if kind == "probe" else orth.data if kind == "orth" else rand[i])
                S.append(dz / own_norm[kind])
                key.append((i, dz, kind))
    V, S = torch.stack(V).float(), torch.tensor(S, dtype=torch.float32)  # (R, d), (R,)

    def ivs(a, b, batch, mask):
        return [Add(vec.site, V[a:b], scale=S[a:b], positions=mask)]
    st = token_stats(lm, rows, batch_size=batch_size, interventions_for=ivs, desc="steer")
    H = {k: float(e.mean()) for k, e in zip(key, st.entropy)}
    n = len(seqs)
    base = np.array([H[(i, 0.0, "probe")] for i in range(n)])
    out = {"site": vec.site, "doses": doses, "weight_norm": wn,
           "vector_norm_per_nat": 1.0 / wn, "base_entropy": float(base.mean()), "n_texts": n}
    if resid_norm:
        out["resid_norm"] = resid_norm
        out["norm_frac"] = [abs(dz) / wn / resid_norm for dz in doses]
    out["random_control"] = "variance-matched (drawn from the activation covariance)"
    for kind in kinds:
        dH = np.array([[H[(i, dz, "probe" if dz == 0 else kind)] - base[i] for dz in doses]
                       for i in range(n)])  # (n, D)
        out[kind] = {"delta_entropy": [bootstrap_mean(dH[:, j], n_boot, seed)
                                       for j in range(len(doses))]}
        x = np.array(doses)

        def slope(idx, dH=dH):
            return float(np.polyfit(x, dH[idx].mean(0), 1)[0])
        est, lo, hi = bootstrap_ci(slope, n, n_boot, seed)
        out[kind]["slope"] = {"nats_entropy_per_nat_surprise": est, "ci": [lo, hi]}
    return out


def run_surprise(lm, seqs: Sequence[Seq], stats: TokenStats, cfg) -> tuple[dict, Vector]:
    res, sw = surprise_probes(seqs, stats, cfg.probe_C, cfg.seed)
    site = pick_steer_site(lm, sw, cfg.steer_site)
    vec = surprise_vector(lm, sw, site, seqs)
    own = [s for s in seqs if s.condition == "own"][:cfg.n_steer]
    k = [j for j, s in enumerate(seqs) if s.condition == "own"][:cfg.n_steer]
    rn = float(torch.cat([stats.acts[site][j] for j in k]).norm(dim=1).mean())
    w = sw.evals[site].probe.weight[0].float()
    h = entropy_readout(stats, site, seqs, cfg.probe_C, cfg.seed)
    wp = orthogonal_to(w, h)
    orth = Vector(wp / wp.norm(), site=site, model=lm.name, method="probe_orth_entropy",
                  normalisation="unit", meta={"weight_norm": float(wp.norm()),
                                              "cos_probe_entropy_readout": float(
                                                  w @ h / (w.norm() * h.norm()))})
    rand = covariance_directions(torch.cat(stats.acts[site]), len(own), cfg.seed + 11)
    res["steering"] = steer_dose_response(lm, vec, own, cfg.steer_doses, cfg.batch_size, cfg.seed,
                                          cfg.n_boot, resid_norm=rn, orth=orth, rand=rand)
    res["steering"]["cos_probe_entropy_readout"] = orth.meta["cos_probe_entropy_readout"]
    return res, vec
