"""Time ``mindscope sae bench`` (mindscope.sae.bench) on one 4,608-latent TopK SAE at SmolLM2
resid_post.15, with the default BenchConfig (90 documents, 3 seeds, all tasks, core metrics).

    # 1. train the SAE (not timed; a folder you reuse), one heavy call:
    PYTHONPATH=src python benchmarks/bench_saebench.py --train-only --save /tmp/sb_sae \
        --steps 600 --batch 1024 --train-docs 600 --max-chars 1200
    # 2. time the suite on it:
    PYTHONPATH=src python benchmarks/bench_saebench.py --sae /tmp/sb_sae --out /tmp/saebench_run

Training data: default-corpus documents after the ones the bench reads (the bench takes the
first 30 per kind), ``--train-docs`` in all (equal per kind, ``--max-chars`` each). Without
``--sae`` the script trains then times in one process. Prints wall and process CPU seconds (on a
shared machine the CPU time, over the threads used, is the better estimate of an idle run),
the torch thread count and the load average before and after."""
import argparse
import json
import os
import time

import torch

import mindscope as ms
from mindscope.sae import (SAE, BenchConfig, SAEConfig, TensorBatches, TrainConfig, Trainer,
                           bench, write_bench)
from mindscope.sae._bench import capture_docs, load_docs


def train(lm, a) -> tuple:
    t, c = time.perf_counter(), time.process_time()
    docs = load_docs(a.train_docs, a.max_chars)                  # equal per kind, in kind order
    per = len(docs) // 3
    train_docs = [d for i, d in enumerate(docs) if i % per >= 30]  # bench reads the first 30/kind
    x = capture_docs(lm, train_docs, a.site)["x"]
    cap_s = time.perf_counter() - t
    [sae] = Trainer([(SAEConfig("topk", lm.d_model, 4608, k=32, model=lm.name, site=a.site),
                      TrainConfig(steps=a.steps))], progress=False).fit(
        TensorBatches(x, a.batch, seed=0))
    info = {"train_rows": int(x.shape[0]), "train_docs": len(train_docs), "steps": a.steps,
            "batch": a.batch, "rows_seen": a.steps * a.batch, "capture_seconds": cap_s,
            "train_seconds": time.perf_counter() - t, "train_cpu_seconds": time.process_time() - c}
    return sae, info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="bench output folder (bench.json, pareto.png, report.html)")
    ap.add_argument("--sae", help="an SAE folder to time (skip training)")
    ap.add_argument("--save", help="save the trained SAE here")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--train-docs", type=int, default=600)
    ap.add_argument("--max-chars", type=int, default=1200)
    ap.add_argument("--site", default="resid_post.15")
    a = ap.parse_args()
    load0 = os.getloadavg()
    lm = ms.load()
    info: dict = {}
    if a.sae:
        sae = SAE.load(a.sae)
        meta = os.path.join(a.sae, "train_info.json")
        if os.path.exists(meta):
            info = json.load(open(meta))
    else:
        sae, info = train(lm, a)
        if a.save:
            sae.save(a.save)
            with open(os.path.join(a.save, "train_info.json"), "w") as f:
                json.dump(info, f, indent=1)
    out = {"sae_training": info, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "loadavg_before": load0}
    if not a.train_only:
        t, c = time.perf_counter(), time.process_time()
        res = bench({"topk_4608": sae}, lm, BenchConfig())
        secs, cpu = time.perf_counter() - t, time.process_time() - c
        if a.out:
            write_bench(res, a.out)
        s = res["saes"]["topk_4608"]
        out.update({"bench_seconds": secs, "bench_cpu_seconds": cpu, "timing": res["timing"],
                    "l0": s["l0"], "fvu": s["fvu"], "parts": s["timing"]})
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
