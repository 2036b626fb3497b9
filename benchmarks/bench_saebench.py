"""Time ``mindscope sae bench`` (mindscope.sae.bench) on one 4,608-latent TopK SAE at SmolLM2
resid_post.15, with the default BenchConfig (90 documents, 3 seeds, all tasks, core metrics).

    PYTHONPATH=src python benchmarks/bench_saebench.py --out /tmp/saebench_run [--steps 100]

The SAE is trained briefly first (not timed; ``--steps`` x 512 rows of activations from default-
corpus documents after the ones the bench reads), so its quality numbers are those of a barely
trained SAE: this script measures the suite's cost. Prints wall and process CPU seconds (on a
shared machine the CPU time, over the threads used, is the better estimate of an idle run) and
the load average before and after."""
import argparse
import json
import os
import time

import torch

import mindscope as ms
from mindscope.sae import (BenchConfig, SAEConfig, TensorBatches, TrainConfig, Trainer, bench,
                           write_bench)
from mindscope.sae._bench import capture_docs, load_docs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--site", default="resid_post.15")
    a = ap.parse_args()
    load0 = os.getloadavg()
    lm = ms.load()
    t = time.perf_counter()
    docs = load_docs(300, 600)                                    # 100 per kind, in kind order
    train_docs = [d for i, d in enumerate(docs) if i % 100 >= 30]  # bench reads the first 30/kind
    cap = capture_docs(lm, train_docs, a.site)
    x = cap["x"]
    [sae] = Trainer([(SAEConfig("topk", lm.d_model, 4608, k=32, model=lm.name, site=a.site),
                      TrainConfig(steps=a.steps))], progress=False).fit(TensorBatches(x, 512, seed=0))
    prep = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    res = bench({"topk_4608": sae}, lm, BenchConfig())
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    write_bench(res, a.out)
    print(json.dumps({"bench_seconds": secs, "bench_cpu_seconds": cpu, "prep_seconds": prep, "train_rows": int(x.shape[0]),
                      "timing": res["timing"], "l0": res["saes"]["topk_4608"]["l0"],
                      "fvu": res["saes"]["topk_4608"]["fvu"], "threads": torch.get_num_threads(),
                      "cpus": os.cpu_count(), "loadavg_before": load0,
                      "loadavg_after": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
