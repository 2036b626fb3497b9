"""Every SAE architecture on synthetic ground truth (mindscope.sae.SynthData): MCC, precision /
recall, shrinkage, absorption, hedging, dead, L0, FVU, over several seeds (mean and 95 %
t-interval over seeds; the seed sets the SAE init, the batch order and the data sample).

    PYTHONPATH=src python benchmarks/bench_synth.py --seeds 3 --steps 800 --out synth.json

Prints a markdown table (the one in docs/sae.md)."""
import argparse
import json
import math
import time

import torch
from scipy.stats import t as student_t

from mindscope.sae import SAEConfig, SynthConfig, SynthData, TensorBatches, TrainConfig, Trainer
from mindscope.sae import synth_eval

SYNTH = SynthConfig(d=32, n_features=128, l0=5, n_parents=8, children_per_parent=3, corr_groups=8)
N_LAT, K = 128, 5
# per architecture: SAEConfig kwargs, TrainConfig kwargs (lambdas chosen for L0 near 5)
ARCHS = {
    "relu": ({}, {"lr": 1e-3, "l1_coef": 1.5}),
    "topk": ({"k": K}, {}),
    "batchtopk": ({"k": K}, {}),
    "jumprelu": ({"threshold_init": 0.5, "bandwidth": 0.05}, {"lr": 1e-3, "l0_coef": 0.5}),
    "matryoshka": ({"k": K}, {}),
}
KEYS = ["mcc", "recovered", "f1", "precision", "recall", "shrinkage", "absorption", "hedging",
        "dead", "l0", "fvu"]


def ci(xs):
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, float(student_t.ppf(0.975, len(xs) - 1)) * sd / math.sqrt(len(xs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = SynthData(SYNTH)
    res = {}
    for arch in a.archs.split(","):
        kw, tkw = ARCHS[arch]
        for seed in range(a.seeds):
            x, _ = data.sample(100_000, torch.Generator().manual_seed(100 + seed))
            t0 = time.time()
            [sae] = Trainer([(SAEConfig(arch, SYNTH.d, N_LAT, **kw),
                              TrainConfig(steps=a.steps, seed=seed, **tkw))],
                            progress=False).fit(TensorBatches(x, a.batch_size, seed=seed))
            r = synth_eval(sae, data, n=10_000, seed=999 + seed)
            r["train_s"] = time.time() - t0
            res.setdefault(arch, []).append(r)
            print(arch, seed, {k: round(v, 3) for k, v in r.items()}, flush=True)
    rows = ["| arch | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    for arch, rs in res.items():
        cells = []
        for k in KEYS:
            m, h = ci([r[k] for r in rs])
            cells.append(f"{m:.3f} ± {h:.3f}" if k != "l0" else f"{m:.2f} ± {h:.2f}")
        rows.append(f"| {arch} | " + " | ".join(cells) + " |")
    print("\n".join(rows))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"synth": vars(SYNTH), "n_latents": N_LAT, "steps": a.steps,
                       "batch_size": a.batch_size, "archs": {k: [kw, tkw] for k, (kw, tkw) in ARCHS.items()},
                       "runs": res}, f, indent=1)


if __name__ == "__main__":
    main()
