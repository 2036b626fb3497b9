"""Harvest throughput on the bundled model, end to end (text in, activations on disk).

    python benchmarks/bench_harvest.py                       # fp32 + bf16, 16k tokens each
    python benchmarks/bench_harvest.py --tokens 32768 --dtypes float32 --threads 2 --rss

For each dtype it measures, on the same tokens of the default corpus (windows of 128, site
resid_post.15, so blocks 0-15 run):

- roofline: FLOPs per token of the 16 blocks run / this machine's measured GEMM throughput;
- plain hook: a bare forward with a hook that stops after block 15, tokens already in memory,
  nothing written (the floor any library pays);
- mindscope harvest: ``harvest()`` end to end: tokenizing and packing the corpus, the forward,
  the copy out, shard writes with checksums, stats, the manifest;
- peers, each in its own venv under benchmarks/.venvs (``python benchmarks/bench_core.py
  --setup-peers`` / ``bench_sae.py --setup-peers`` create them), on the same windows:
  SAELens' CacheActivationsRunner end to end (to disk), TransformerLens run_with_cache and
  nnsight with early stop (in memory; see peers/harvest_peers.py); "not installed" otherwise.

With ``--rss`` it also runs two harvests of N and 3N tokens (shards of 4,096 tokens) in fresh
processes and reports the peak RSS sampled during each (it must not grow with corpus size). Timings on a shared CPU are noisy: the plain hook
and the harvest run interleaved, and their ratio is the number to read.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import flops_per_token, gemm_gflops, run_peer  # noqa: E402

SITE, LAYER, WINDOW = "resid_post.15", 15, 128


def plain_hook(lm, windows, batch) -> float:
    """tok/s of a bare forward with an early-stop hook after block LAYER (in memory)."""
    class Stop(Exception):
        pass

    out = []

    def hook(mod, args, output):
        out.append((output[0] if isinstance(output, tuple) else output).detach().clone())
        raise Stop

    h = lm.block(LAYER).register_forward_hook(hook)
    t = time.perf_counter()
    n = 0
    try:
        with torch.no_grad():
            for a in range(0, len(windows), batch):
                ids = windows[a:a + batch]
                try:
                    lm.model(input_ids=ids, use_cache=False)
                except Stop:
                    pass
                n += ids.numel()
    finally:
        h.remove()
    return n / (time.perf_counter() - t)


def ours(lm, corpus, n_tokens, batch) -> float:
    from mindscope.activations import harvest

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        harvest(lm, d, sites=SITE, corpus=corpus, n_tokens=n_tokens, window=WINDOW,
                batch_size=batch, progress=False)
        return n_tokens / (time.perf_counter() - t)


def peers(lm, windows, dtype: str, batch: int, repeats: int) -> dict:
    """tok/s of the peers on the same windows, each in its own venv (benchmarks/.venvs):
    nnsight and TransformerLens in-memory capture, SAELens' activation cache runner to disk."""
    from safetensors.torch import save_file

    import mindscope as ms

    folder = str(ms.core._load.resolve(lm.name)[0])
    out = {}
    with tempfile.TemporaryDirectory() as d:
        f = str(Path(d) / "ids.safetensors")
        save_file({"ids": windows.to(torch.int32).contiguous()}, f)
        for venv in ("hooks", "saelens"):
            r = run_peer(venv, "harvest_peers.py", venv, folder, f, dtype, str(batch),
                         "--repeats", str(repeats), timeout=3600)
            if "error" in r:
                r = {("nnsight" if venv == "hooks" else "sae_lens_cache_runner"): r["error"]}
            out.update(r)
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2 ** 20


def rss_child(n_tokens: int, dtype: str) -> None:
    """Harvest n_tokens in this fresh process; report RSS sampled every 50 ms during it."""
    import threading

    import mindscope as ms
    from mindscope.activations import harvest

    lm = ms.load(dtype=dtype)
    base, peak, done = _rss_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    with tempfile.TemporaryDirectory() as d:
        harvest(lm, d, sites=SITE, n_tokens=n_tokens, window=WINDOW, shard_tokens=4096,
                progress=False)
    done.set()
    th.join()
    print(json.dumps({"n_tokens": n_tokens, "rss_after_load_mb": base, "peak_rss_mb": peak[0]}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--batch", type=int, default=32, help="windows per forward")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rss", action="store_true")
    ap.add_argument("--no-peers", action="store_true", help="skip the peer venvs")
    ap.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.rss_child:
        return rss_child(a.rss_child, a.dtypes.split(",")[0])
    import mindscope as ms
    from mindscope.activations import (WindowConfig, build_default_corpus, iter_windows,
                                       open_corpus)

    corpus = open_corpus("default")
    print(f"default corpus: {build_default_corpus()}  threads={torch.get_num_threads()}  "
          f"tokens={a.tokens}  window={WINDOW}  site={SITE}")
    results = {}
    for dtype in a.dtypes.split(","):
        lm = ms.load(dtype=dtype)
        tok = lm.tokenizer
        ws = list(iter_windows(corpus, tok, WindowConfig(length=WINDOW), n_windows=a.tokens // WINDOW))
        windows = torch.from_numpy(np.stack([w.ids for w in ws]))  # (N, 128)
        tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        gflops = gemm_gflops(tdt)
        fpt = flops_per_token(lm, LAYER + 1, WINDOW)
        roof = gflops * 1e9 / fpt
        plain_hook(lm, windows[:a.batch], a.batch)  # warm up
        p, o = [], []
        for _ in range(a.repeats):  # interleaved: the CPU is shared, load drifts
            p.append(plain_hook(lm, windows, a.batch))
            o.append(ours(lm, corpus, a.tokens, a.batch))
        r = {"gemm_gflops": gflops, "mflop_per_token": fpt / 1e6, "roofline_tok_s": roof,
             "plain_hook_tok_s": max(p), "harvest_tok_s": max(o),
             "harvest_vs_roofline": max(o) / roof, "harvest_vs_plain_hook": max(o) / max(p),
             "plain_vs_roofline": max(p) / roof}
        results[dtype] = r
        print(f"\n[{dtype}] GEMM {gflops:.0f} GFLOP/s, {fpt / 1e6:.1f} MFLOP/token (blocks 0-{LAYER})"
              f" -> roofline {roof:,.0f} tok/s")
        print(f"  plain hook, in memory     {max(p):8,.0f} tok/s  ({max(p) / roof:.0%} of roofline)")
        print(f"  mindscope harvest, e2e    {max(o):8,.0f} tok/s  ({max(o) / roof:.0%} of roofline, "
              f"{max(o) / max(p):.0%} of plain hook)")
        pr = peers(lm, windows, dtype, a.batch, a.repeats) if not a.no_peers else {}
        r["peers"] = pr
        names = {"nnsight": "nnsight (in memory)", "transformer_lens": "TransformerLens (in memory)",
                 "sae_lens_cache_runner": "SAELens cache runner (disk)"}
        for k, label in names.items():
            v = pr.get(k, "not run (--no-peers)" if a.no_peers else "not installed")
            if isinstance(v, (int, float)):
                print(f"  {label:<30}{v:8,.0f} tok/s  ({v / roof:.0%} of roofline; mindscope harvest "
                      f"= {max(o) / v:.2f}x)")
            else:
                print(f"  {label:<30}{v}")
        del lm
    if a.rss:
        rows = []
        for n in (a.tokens, 3 * a.tokens):
            r = subprocess.run([sys.executable, __file__, "--rss-child", str(n), "--dtypes",
                                a.dtypes.split(",")[-1]] + (["--threads", str(a.threads)]
                                                            if a.threads else []),
                               capture_output=True, text=True)
            line = [x for x in r.stdout.splitlines() if x.startswith("{")]
            rows.append(json.loads(line[-1]) if line else {"n_tokens": n, "error": r.stderr[-300:]})
            print(f"  peak RSS, harvest of {n:>7} tokens: {rows[-1].get('peak_rss_mb', float('nan')):.0f} MB "
                  f"(after model load {rows[-1].get('rss_after_load_mb', float('nan')):.0f} MB)")
        results["rss"] = rows
    print(json.dumps(results))


if __name__ == "__main__":
    main()
