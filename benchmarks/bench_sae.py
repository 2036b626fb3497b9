"""Benchmark: TopK SAE training throughput and quality, mindscope vs sparsify and SAELens on the
same activations, the same batches in the same order and the same hyper-parameters.

    python benchmarks/bench_sae.py --store /work/runs_sae/acts_l15    # a harvest of resid_post.15
    python benchmarks/bench_sae.py --real                # capture resid_post.15 of SmolLM2 here
    python benchmarks/bench_sae.py                       # synthetic activations (d=576)
    python benchmarks/bench_sae.py --acts acts.safetensors   # tensor "acts" (N, d)

Config for every trainer: d=576, 9216 latents (16x), k=32, batch 4096, Adam (0.9, 0.999),
constant lr 2e-4/sqrt(n/2^14), AuxK coefficient 1/32 with dead = no firing in 10M tokens (never
reached in a short run), fp32. Initialisation is each trainer's own (b_dec = batch mean for
mindscope and sparsify; zero for SAELens, which has no option; ``--saelens-b-dec-mean`` adds a
SAELens row started from the mean). The peers run in their own venvs (benchmarks/.venvs/<name>,
``--setup-peers`` creates them) through benchmarks/peers/sae_peers.py, which uses each peer's
own SAE class and optimizer step; the batches are handed over in a temporary safetensors file.

The CPU is shared, so the trainers are interleaved: ``--reps`` rounds, each round runs every
trainer once, right after a fresh GEMM measurement (``_common.gemm_gflops``, 2048^2, fp32; bf16
for the bf16 row). Per
trainer we print the best and the median over rounds of tokens/s (batch / median step time,
step 0 excluded: it holds the initialisation), ours-vs-peer ratios of the best and of the
median, and the fraction of the roofline: one step needs at least the encoder GEMM, 2*d*n
FLOP/token (10.6 MFLOP/token here; the sparse backward adds O(k d)), so the roofline is
GEMM_rate / (2 d n) tokens/s, taken with the GEMM rate measured in the same round. Quality:
held-out FVU = sum||x - x_hat||^2 / sum||x - mean||^2, L0 and dead fraction (never fired on the
held-out rows) after the same tokens, median over rounds. ``uptime`` load averages are printed
per round: absolute numbers under load mean little, ratios taken in the same round more.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_peer_venv, gemm_gflops, peer_python, run_peer  # noqa: E402

from mindscope.sae import SAEConfig, TrainConfig, Trainer, drop_outliers, evaluate  # noqa: E402

OURS = "mindscope"


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def activations(args) -> tuple:
    """(train (steps*batch, d) in consumption order, held (N, d)), outlier rows removed."""
    need = args.steps * args.batch
    if args.store:
        from mindscope.activations import ActivationStore
        st = ActivationStore.open(args.store)
        rd = st.reader(args.batch, shuffle=True, seed=0, split="train", drop_last=True)
        rows, got = [], 0
        for b in rd:
            b = b[drop_outliers(b, 10.0)]
            rows.append(b)
            got += b.shape[0]
            if got >= need:
                break
        held = torch.cat([b for _, b in zip(range(4), st.reader(4096, shuffle=False, split="heldout"))])
        train = torch.cat(rows)
        if train.shape[0] < need:
            raise SystemExit(f"{args.store} has {train.shape[0]} train rows, {need} needed")
        held = held[drop_outliers(held, 10.0)][: args.held]
        print(f"activations: {st} -> train {tuple(train[:need].shape)}, held-out {tuple(held.shape)} "
              "(heldout split: other documents)")
        return train[:need], held
    if args.acts:
        from safetensors.torch import load_file
        x = load_file(args.acts)["acts"].float()
    elif args.real:
        import mindscope as ms
        from mindscope.activations import open_corpus
        lm = ms.load("smollm2-135m-instruct")
        texts = [d.text[:1500] for d in open_corpus("default") if d.text][:800]
        rows = []
        for i in range(0, len(texts), 16):
            rows.append(lm.capture(texts[i:i + 16], sites=["resid_post.15"])["resid_post.15"])
            if sum(r.shape[0] for r in rows) >= need + args.held:
                break
        x = torch.cat(rows).float()
    else:   # synthetic: sparse combinations of a random dictionary + noise
        g = torch.Generator().manual_seed(0)
        D = torch.randn(4 * args.d, args.d, generator=g)
        x = torch.empty(need + args.held, args.d)
        for s in range(0, x.shape[0], 8192):
            m = min(8192, x.shape[0] - s)
            c = (torch.rand(m, D.shape[0], generator=g) < 0.01) * torch.rand(m, D.shape[0], generator=g)
            x[s:s + m] = c @ D + 0.1 * torch.randn(m, args.d, generator=g)
    keep = drop_outliers(x, 10.0)
    print(f"activations: {tuple(x.shape)}, dropped {int((~keep).sum())} outlier rows (norm > 10x median)")
    x = x[keep]
    if x.shape[0] < need + args.held:
        raise SystemExit(f"only {x.shape[0]} rows, need {need + args.held}; lower --steps/--held")
    g = torch.Generator().manual_seed(0)
    x = x[torch.randperm(x.shape[0], generator=g)]
    return x[:need], x[need:need + args.held]


def run_mindscope(train, held, args, fast=True, bf16=False) -> dict:
    B = args.batch
    steps = train.shape[0] // B
    tc = TrainConfig(steps=steps, lr=args.lr, fast=fast, bf16=bf16, lr_decay=0.0,
                     aux_coef=1 / 32, outlier_factor=None)
    tr = Trainer([(SAEConfig("topk", train.shape[1], args.latents, k=args.k), tc)], progress=False,
                 log_every=10 ** 9)
    times: list = []

    class Timed:   # the same batches, in the same order, as the peers get
        def iter_from(self, step):
            for s in range(step, steps):
                times.append(time.perf_counter())
                yield train[s * B:(s + 1) * B]
    t0 = time.perf_counter()
    [sae] = tr.fit(Timed())
    times.append(time.perf_counter())
    dts = [b - a for a, b in zip(times[1:-1], times[2:])]            # step 0 holds the init
    m = evaluate(sae, [held], outlier_factor=None)
    return {"tok_s": B / statistics.median(dts), "tok_s_best": B / min(dts), "fvu": m["fvu"],
            "dead": m["dead_fraction"], "l0": m["l0"], "wall_s": time.perf_counter() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--latents", type=int, default=9216)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=32, help="steps per run (tokens = steps*batch)")
    ap.add_argument("--held", type=int, default=8192, help="held-out rows")
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--lr", type=float, default=None, help="default 2e-4/sqrt(latents/2^14)")
    ap.add_argument("--store", default=None, help="activation store (mindscope harvest)")
    ap.add_argument("--acts", default=None)
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--peers", default="sparsify,saelens", help="comma list; '' = none")
    ap.add_argument("--saelens-b-dec-mean", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="add a mindscope row with a bf16 encoder GEMM")
    ap.add_argument("--naive", action="store_true", help="add the naive dense-autograd loop")
    ap.add_argument("--setup-peers", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.lr = args.lr or 2e-4 / (args.latents / 2 ** 14) ** 0.5
    torch.manual_seed(0)
    print(f"load average at start: {load_avg()}  (cores: {os.cpu_count()}, torch threads: "
          f"{torch.get_num_threads()})")
    train, held = activations(args)
    d = train.shape[1]
    flop_tok = 2 * d * args.latents
    peers = [p for p in args.peers.split(",") if p]
    if args.setup_peers:
        for p in peers:
            ensure_peer_venv(p)
    runners = {OURS: lambda: run_mindscope(train, held, args)}
    if args.bf16:
        runners[OURS + " bf16"] = lambda: run_mindscope(train, held, args, bf16=True)
    if args.naive:
        runners[OURS + " naive dense"] = lambda: run_mindscope(train, held, args, fast=False)
    tmp = tempfile.TemporaryDirectory(prefix="bench_sae_")
    data = Path(tmp.name) / "acts.safetensors"
    from safetensors.torch import save_file
    save_file({"train": train.contiguous(), "held": held.contiguous()}, str(data))
    common = ["--latents", str(args.latents), "--k", str(args.k), "--batch", str(args.batch),
              "--lr", repr(args.lr)]
    for p in peers:
        name = {"saelens": "sae_lens"}.get(p, p)
        if peer_python(p) is None:
            runners[name] = lambda p=p: {"error": f"benchmarks/.venvs/{p} missing (--setup-peers)"}
            continue
        runners[name] = lambda p=p: run_peer(p, "sae_peers.py", p, str(data), *common, timeout=1800)
        if p == "saelens" and args.saelens_b_dec_mean:
            runners["sae_lens b_dec=mean"] = lambda: run_peer("saelens", "sae_peers.py", "saelens",
                                                              str(data), *common, "--b-dec-mean",
                                                              timeout=1800)
    print(f"config: d={d}, latents={args.latents}, k={args.k}, batch={args.batch}, "
          f"steps={args.steps} ({args.steps * args.batch:,} tokens per run), lr={args.lr:.3g}, "
          f"held-out rows={held.shape[0]}, rounds={args.reps}")
    runs: dict = {k: [] for k in runners}
    for r in range(args.reps):
        for name, fn in runners.items():
            # the bf16 row's bound is the bf16 GEMM rate (the encoder GEMM runs in bf16 there)
            gf = gemm_gflops(torch.bfloat16 if "bf16" in name else torch.float32, reps=4)
            la = load_avg()
            res = fn()
            res.update(gemm_gflops=gf, roofline_tok_s=gf * 1e9 / flop_tok, load=la, round=r)
            runs[name].append(res)
            if "error" in res:
                print(f"round {r} {name:24s} FAILED: {res['error']}")
            else:
                print(f"round {r} {name:24s} {res['tok_s']:8,.0f} tok/s  FVU {res['fvu']:.3f}  "
                      f"L0 {res['l0']:.1f}  dead {100 * res['dead']:.1f}%  GEMM {gf:5.0f} GFLOP/s  "
                      f"roofline {res['tok_s'] * flop_tok / (gf * 1e9):5.1%}  load {la}", flush=True)
    tmp.cleanup()

    ok = {k: [x for x in v if "error" not in x] for k, v in runs.items()}
    summ = {}
    for k, v in ok.items():
        if not v:
            continue
        summ[k] = {"best": max(x["tok_s"] for x in v), "median": statistics.median(x["tok_s"] for x in v),
                   "roof_best": max(x["tok_s"] / x["roofline_tok_s"] for x in v),
                   "roof_median": statistics.median(x["tok_s"] / x["roofline_tok_s"] for x in v),
                   "fvu": statistics.median(x["fvu"] for x in v),
                   "dead": statistics.median(x["dead"] for x in v),
                   "l0": statistics.median(x["l0"] for x in v), "n": len(v)}
    ours = summ.get(OURS)
    print(f"\nsummary over {args.reps} interleaved rounds, {args.steps * args.batch:,} tokens per run; "
          f"load average at end: {load_avg()}")
    print(f"{'trainer':24s} {'best tok/s':>10s} {'median':>8s} {'ours/it best':>12s} {'median':>7s} "
          f"{'paired':>7s} {'roofline best':>13s} {'median':>7s} {'FVU':>6s} {'L0':>5s} {'dead%':>6s}")
    for k, s in summ.items():
        paired = [a["tok_s"] / b["tok_s"] for a, b in zip(runs[OURS], runs[k])
                  if "error" not in a and "error" not in b] if ours else []
        rb = f"{ours['best'] / s['best']:.2f}x" if ours else "n/a"
        rm = f"{ours['median'] / s['median']:.2f}x" if ours else "n/a"
        rp = f"{statistics.median(paired):.2f}x" if paired else "n/a"
        s["ratio_best"], s["ratio_median"] = rb, rm
        s["ratio_paired_median"] = rp
        print(f"{k:24s} {s['best']:10,.0f} {s['median']:8,.0f} {rb:>12s} {rm:>7s} {rp:>7s} "
              f"{s['roof_best']:13.1%} {s['roof_median']:7.1%} {s['fvu']:6.3f} {s['l0']:5.1f} "
              f"{100 * s['dead']:6.1f}")
    for k, v in runs.items():
        if k not in summ:
            print(f"{k:24s} FAILED: {v[0].get('error') if v else 'no run'}")
    print("ours/it = mindscope tok/s divided by that trainer's; paired = median over rounds of the "
          "same-round ratio; roofline = tok/s / (GEMM rate of that round / (2 d n) FLOP/token)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "summary": summ,
                                               "flop_per_token": flop_tok}, indent=1, default=str))


if __name__ == "__main__":
    main()
