"""Diagnostics of the binding positive control (docs/experiments/binding.md, issue 24).

`where OUT.json`: held-out accuracy (Wilson 95%) of ridge probes for the PRIOR and CURRENT entity per
layer and token position class (all story tokens, entity-name tokens, the token after the name, the
segment's last token, other tokens), 160 stories split by story, on the untouched model and on the
induction LoRA x1 (trained into runs/controls/binding/lora if absent).
`causal`: on the LoRA x1 and the untouched model, prior-probe (fitted on name tokens) ablation vs 5
random probe-shaped subspaces, paired over 48 induction prompts, at name tokens vs every story token.
`erasure OUT.json`: does a removal take the prior entity out of the name tokens? On the untouched
model (120 stories per seed, seeds 0 and 1, the protocol's story split), per layer: a ridge probe
REFITTED on the training rows after (a) the old probe-subspace projection, (b) LEACE, and tested on
the held-out rows after the same removal (Wilson 95%), with the edit sizes.

    /work/wt/heavy python benchmarks/binding_control_diag.py where runs/where.json
    /work/wt/heavy python benchmarks/binding_control_diag.py causal
    /work/wt/heavy python benchmarks/binding_control_diag.py erasure runs/erasure.json
"""
import json
import logging
import sys
import time

import numpy as np
import torch
from scipy.stats import t as student_t

import mindscope as ms
from mindscope.core import Ablate
from mindscope.experiments import binding
from mindscope.experiments.binding import control as C
from mindscope.experiments.binding.data import (BindingData, generate_stories, induction_items,
                                                 token_labels)
from mindscope.experiments.binding.tasks import first_token, story_mask, unit_scores
from mindscope.probes import fit_probe, group_split, orthonormal_basis, random_basis
from mindscope.runs import wilson


def _setup():
    """The untouched model, the control's config, the LoRA x1 (adapter in
    runs/controls/binding/lora, trained there if absent), the protocol's data and label maps."""
    lm0 = ms.load()
    cfg = C.configure(binding.Config.quick(n_stories=48, layers="0.2,0.3,0.4,0.5", n_items=24,
                                           progress=False))
    p = C.plant_lora(lm0, cfg, "runs/controls/binding/planted-1/model", 1.0)
    full = BindingData.load()
    names = binding.pick_names(lm0, full.names, cfg.n_names)
    d = full.subset(names, full.adjectives[:cfg.n_adjectives])
    return (lm0, cfg, p, d, {n: i for i, n in enumerate(d.names)},
            {a: i for i, a in enumerate(d.adjectives)})


def where(out):
    lm0, cfg, p, d, nix, aix = _setup()
    LAY = list(range(0, 30, 2)) + [29]
    sites = [f"resid_post.{L}" for L in LAY]
    stories = generate_stories(d, 160, (3, 5), 100)


    def classes(s, offsets):
        """per token: 0 other, 1 name token, 2 first token after the name, 3 segment's last token"""
        T = len(offsets); c = np.zeros(T, int)
        nm = []
        for k, (a, b) in enumerate(s.spans):
            i = s.text.index(s.names[k], a); nm.append((i, i + len(s.names[k])))
        for t, (x, y) in enumerate(offsets):
            if y <= x: continue
            for k, (a, b) in enumerate(s.spans):
                if a <= y - 1 < b:
                    if nm[k][0] <= y - 1 < nm[k][1]: c[t] = 1
                    elif t > 0 and nm[k][0] <= offsets[t - 1][1] - 1 < nm[k][1]: c[t] = 2
                    elif y == b: c[t] = 3
        return c


    res = {}
    for tag, lm in (("untouched", lm0), ("planted", p.lm)):
        t0 = time.time()
        b = lm.tokenize([s.text for s in stories])
        cap = lm.capture(b, sites=sites, positions="all", batch_size=16, progress=False)
        labs = [token_labels(s, m.offsets, nix, aix) for s, m in zip(stories, b.meta)]
        cls = [classes(s, m.offsets) for s, m in zip(stories, b.meta)]
        rows, pos = cap.row.numpy(), cap.pos.numpy()
        prior = np.array([labs[r]["prior"][q] for r, q in zip(rows, pos)])
        cur = np.array([labs[r]["current"][q] for r, q in zip(rows, pos)])
        pc = np.array([cls[r][q] for r, q in zip(rows, pos)])
        keep = prior >= 0
        test = group_split(rows[keep], 0.25, 0, n=int(keep.sum()))
        out = {}
        for L, site in zip(LAY, sites):
            X = cap[site][keep].float().numpy()
            for cname, sel in (("all", np.ones(keep.sum(), bool)), ("name", pc[keep] == 1),
                               ("after_name", pc[keep] == 2), ("seg_end", pc[keep] == 3), ("other", pc[keep] == 0)):
                for slot, y in (("prior", prior[keep]), ("current", cur[keep])):
                    tr, te = sel & ~test, sel & test
                    pr = fit_probe(X[tr], y[tr], kind="ridge", C=0.01)
                    k = int((pr.predict(X[te]) == y[te]).sum()); n = int(te.sum())
                    vals, cnt = np.unique(y[tr], return_counts=True)
                    ch = float((y[te] == vals[cnt.argmax()]).mean())
                    w = wilson(k, n)
                    out[f"{L}/{cname}/{slot}"] = {"acc": k / n, "lo": w["lo"], "hi": w["hi"], "n": n, "chance": ch}
        res[tag] = out
        print(tag, f"{time.time()-t0:.0f}s", flush=True)
        for cname in ("all", "name", "after_name", "seg_end", "other"):
            print(f"  {cname:10s} prior:", " ".join(f"{L}:{out[f'{L}/{cname}/prior']['acc']:.2f}" for L in LAY),
                  f"(chance~{out[f'{LAY[0]}/{cname}/prior']['chance']:.2f}, n={out[f'{LAY[0]}/{cname}/prior']['n']})")
            print(f"  {cname:10s} curr :", " ".join(f"{L}:{out[f'{L}/{cname}/current']['acc']:.2f}" for L in LAY))
        json.dump(res, open(out, "w"), indent=1)
        del cap


def causal():
    lm0, cfg, p, d, nix, aix = _setup()
    LAY = [6, 9, 12, 15, 18, 24, 27]
    sites = [f"resid_post.{L}" for L in LAY]
    stories = generate_stories(d, 120, (3, 5), 100)
    items = induction_items(d, 48, (3, 5), 0)
    nameset = set(d.names)

    def name_mask(b, chunk):
        T = max(len(m.offsets) for m in b.meta)
        m = torch.zeros(len(chunk), T, dtype=torch.bool)
        for i, (meta, it) in enumerate(zip(b.meta, chunk)):
            p_ = it.prompt
            for u, (x, y) in enumerate(meta.offsets):
                m[i, u] = 0 < y <= it.story_chars and p_[x:y].strip() in nameset
        return m

    def score(lm, bases, where):
        out = []
        for a in range(0, len(items), 16):
            chunk = items[a:a + 16]
            b = lm.tokenize([it.prompt for it in chunk])
            ivs = []
            if bases:
                mask = name_mask(b, chunk) if where == "names" else story_mask(b, chunk)
                ivs = [Ablate(s, B, subspace=True, positions=mask) for s, B in bases.items()]
            last = f"resid_post.{lm.n_layers - 1}"
            with lm.intervene(*ivs):
                h = lm.capture(b, sites=last, positions="last", batch_size=len(chunk), progress=False)[last]
            lp = torch.log_softmax(lm.unembed(h).float(), -1)
            for i, it in enumerate(chunk):
                out.append(lp[i, [first_token(lm, c) for c in it.candidates]].numpy())
        u = unit_scores(items, out)["induction"]
        return np.array([u[k] for k in sorted(u)])

    def ci(x):
        m, s = x.mean(), x.std(ddof=1) / np.sqrt(len(x)); h = student_t.ppf(0.975, len(x) - 1) * s
        return f"{m:+.3f} [{m-h:+.3f}, {m+h:+.3f}]"

    LSETS = {"probe-top5(12,15,18,24,27)": [12, 15, 18, 24, 27], "old-auto(6,9,12,15,18)": [6, 9, 12, 15, 18]}
    res = {}
    for tag, lm in (("planted", p.lm), ("untouched", lm0)):
        t0 = time.time()
        b = lm.tokenize([s.text for s in stories])
        cap = lm.capture(b, sites=sites, positions="all", batch_size=16, progress=False)
        rows, pos = cap.row.numpy(), cap.pos.numpy()
        labs = [token_labels(s, m.offsets, nix, aix) for s, m in zip(stories, b.meta)]
        prior = np.array([labs[r]["prior"][q] for r, q in zip(rows, pos)])
        isname = np.array([s.text[m.offsets[q][0]:m.offsets[q][1]].strip() in nameset for r, q in zip(rows, pos)
                           for s, m in [(stories[r], b.meta[r])]])
        keep = (prior >= 0) & isname
        basis, rnd = {}, {j: {} for j in range(5)}
        for L, s in zip(LAY, sites):
            X = cap[s][keep].float().numpy()
            pr = fit_probe(X, prior[keep], kind="ridge", C=0.01)
            basis[L] = orthonormal_basis(pr.weight, center=True)
            sd = torch.from_numpy(X.std(0)).clamp(min=1e-8)
            for j in range(5):
                rnd[j][L] = orthonormal_basis(random_basis(lm.d_model, basis[L].shape[0], 7 + 31 * j + L) / sd)
        base = score(lm, None, "story")
        print(tag, "no ablation mean right-answer logp", base.mean(), "acc", flush=True)
        for ln, Ls in LSETS.items():
            for where in ("names", "story"):
                pu = score(lm, {f"resid_post.{L}": basis[L] for L in Ls}, where)
                rs = np.stack([score(lm, {f"resid_post.{L}": rnd[j][L] for L in Ls}, where) for j in range(5)])
                print(f"  {tag} layers {ln} at {where}: prior-none {ci(pu-base)}  rand-none {ci(rs.mean(0)-base)}"
                      f"  prior-rand(avg5) {ci(pu-rs.mean(0))}  per-draw prior-rand means "
                      + " ".join(f"{(pu-r).mean():+.3f}" for r in rs), flush=True)
        print(tag, f"{time.time()-t0:.0f}s", flush=True)


def erasure(out):
    from mindscope.experiments.binding.erase import name_positions, name_rows
    from mindscope.probes import fit_leace, majority_rate

    lm = ms.load()
    full = BindingData.load()
    d = full.subset(binding.pick_names(lm, full.names, 8), full.adjectives[:8])
    nix, aix = ({x: i for i, x in enumerate(v)} for v in (d.names, d.adjectives))
    res = {}
    for seed in (0, 1):
        texts, mask, per = name_positions(lm, generate_stories(d, 120, (3, 5), seed), nix, aix)
        LAY = [12, 15, 18, 24, 27]
        X, lab, st = name_rows(lm, texts, mask, per, [f"resid_post.{L}" for L in LAY])
        y = lab["prior"]
        te = group_split(st, 0.25, seed, n=len(st))
        for L in LAY:
            A = X[f"resid_post.{L}"].astype(np.float64)
            p = fit_probe(A[~te], y[~te], kind="ridge", C=0.01)
            B = orthonormal_basis(p.weight, center=True).double().numpy()  # (7, d) probe rows
            e = fit_leace(A[~te], y[~te])

            def refit(Z):
                a = fit_probe(Z[~te], y[~te], kind="ridge", C=0.01).score(Z[te], y[te])
                w = wilson(int(round(a * te.sum())), int(te.sum()))
                return [round(a, 3), round(w["lo"], 3), round(w["hi"], 3)]
            r = {"clean_refit": refit(A), "probe_ablated_refit": refit(A - (A @ B.T) @ B),
                 "leace_refit": refit(e(A)), "chance": round(majority_rate(y[te]), 3),
                 "n_test": int(te.sum()),
                 "edit_probe_ablation": round(float(np.sqrt(((A @ B.T) ** 2).sum(1).mean())), 1),
                 "edit_leace": round(e.edit_norm(A), 1)}
            res[f"s{seed}_L{L}"] = r
            print(seed, L, json.dumps(r), flush=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    {"where": lambda: where(sys.argv[2]), "erasure": lambda: erasure(sys.argv[2])}.get(
        sys.argv[1], causal)()
