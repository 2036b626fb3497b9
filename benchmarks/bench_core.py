"""Core benchmark on the real default model (SmolLM2-135M-Instruct), one run, ratios printed:

1. capture throughput of resid_post.15 (early stop) vs HF output_hidden_states, a plain hook,
   nnsight and TransformerLens (peer venv, if set up), and vs this machine's GEMM roofline;
2. steered vs plain generate() tokens/s (batch 1, greedy, 64 new tokens);
3. a sweep of 32 (vector, strength) trials as per-row steering in one batch vs one at a time.

    python benchmarks/bench_core.py [--quick] [--setup-peers] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402

import mindscope as ms  # noqa: E402
from mindscope.core import Batch  # noqa: E402
from mindscope.core._hooks import StopForward  # noqa: E402


def windows(lm, n: int, T: int) -> Batch:
    import inspect, textwrap  # noqa: E401 - any long English-ish text works; use stdlib docs
    import collections, json as j, logging  # noqa: E401
    text = "\n\n".join(textwrap.dedent(inspect.getdoc(m) or "") for m in
                       (collections, j, logging, inspect, textwrap, argparse, time))
    ids = lm.tokenizer(text * 4)["input_ids"]
    need = n * T
    ids = (ids * (need // len(ids) + 1))[:need]
    x = torch.tensor(ids).view(n, T)
    return Batch(x, torch.ones_like(x))


def timed(fn, reps: int = 1) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def bench_capture(lm, n, T, bs, rounds: int) -> dict:
    """Median tokens/s over ``rounds`` interleaved rounds: in each, every method makes one pass
    over the same n x T windows (peers in their own venv, driven round by round)."""
    b = windows(lm, n, T)
    toks = n * T

    def hf():
        with torch.no_grad():
            for a in range(0, n, bs):
                lm.model(input_ids=b.input_ids[a:a + bs], output_hidden_states=True)

    def plain_hook():
        def hook(m, a, o):
            raise StopForward
        h = lm.block(15).register_forward_hook(hook)
        try:
            with torch.no_grad():
                for a in range(0, n, bs):
                    try:
                        lm.model(input_ids=b.input_ids[a:a + bs])
                    except StopForward:
                        pass
        finally:
            h.remove()

    ours = {"mindscope": lambda: lm.capture(b, "resid_post.15", batch_size=bs, progress=False),
            "hf_output_hidden_states": hf, "plain_hook_early_stop": plain_hook}
    for fn in ours.values():
        fn()  # warm-up
    peer = C.PeerRounds("hooks", "core_peers.py", str(ms.core._load.resolve(lm.name)[0]),
                        str(n), str(T), str(bs))
    samples: dict[str, list] = {k: [] for k in ours}
    try:
        for _ in tqdm(range(rounds), desc="capture rounds", unit="round"):
            for k, fn in ours.items():
                t = time.perf_counter()
                fn()
                samples[k].append(toks / (time.perf_counter() - t))
            for k, v in peer.round().items():
                samples.setdefault(k, []).append(v)
    finally:
        peer.close()
    res = {k: statistics.median(v) for k, v in samples.items()}
    for k in ("nnsight", "transformer_lens"):
        if k not in res:
            res[k] = peer.info.get(k, peer.info.get("error", "failed"))
    res["_samples"] = samples
    return res


def bench_generate(lm, new_tokens: int) -> dict:
    p = ["Write a short story about a lighthouse keeper."]
    v = torch.randn(lm.d_model)
    plain = timed(lambda: lm.generate(p, max_new_tokens=new_tokens, stop_at_eos=False))
    steered = timed(lambda: lm.generate(p, max_new_tokens=new_tokens, stop_at_eos=False,
                    interventions=[ms.Add("resid_post.15", v, scale=4.0)]))
    b = lm.tokenize(p, chat=True)
    hf = timed(lambda: lm.model.generate(b.input_ids, attention_mask=b.attention_mask,
                                         max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         do_sample=False))
    return {"plain_tok_s": new_tokens / plain, "steered_tok_s": new_tokens / steered,
            "hf_generate_tok_s": new_tokens / hf, "overhead_pct": 100 * (steered / plain - 1)}


def bench_sweep(lm, trials: int, new_tokens: int) -> dict:
    g = torch.Generator().manual_seed(0)
    V = torch.randn(trials, lm.d_model, generator=g)
    S = torch.linspace(0, 8, trials)
    p = "Tell me about the ocean."

    def one_by_one():
        for i in range(trials):
            lm.generate([p], max_new_tokens=new_tokens, stop_at_eos=False,
                        interventions=[ms.Add("resid_post.15", V[i], scale=float(S[i]))])

    def batched():
        lm.generate([p] * trials, max_new_tokens=new_tokens, stop_at_eos=False,
                    batch_size=trials, interventions=[ms.Add("resid_post.15", V, scale=S)])
    t1 = timed(one_by_one, reps=1)
    tb = timed(batched, reps=1)
    toks = trials * new_tokens
    return {"one_at_a_time_tok_s": toks / t1, "batched_tok_s": toks / tb, "speedup": t1 / tb}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    ap.add_argument("--setup-peers", action="store_true", help="create the peer venv first")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved capture rounds (median)")
    ap.add_argument("--json", type=Path, help="also write results here")
    a = ap.parse_args()
    if a.setup_peers:
        C.ensure_peer_venv("hooks")
    torch.manual_seed(0)
    lm = ms.load()
    n, T, bs = (16, 128, 8) if a.quick else (64, 128, 16)
    gemm = C.gemm_gflops(torch.float32)
    cap = bench_capture(lm, n, T, bs, a.rounds)
    fpt = C.flops_per_token(lm, 16, T)
    roof = gemm * 1e9 / fpt
    print(f"\n== capture resid_post.15, {n}x{T} tokens, median of {a.rounds} "
          f"interleaved rounds, fp32 (GEMM {gemm:.0f} GFLOP/s -> roofline {roof:.0f} tok/s for 16 blocks)")
    for k, v in cap.items():
        if k.startswith("_"):
            continue
        if isinstance(v, (int, float)):
            print(f"  {k:26s} {v:8.0f} tok/s  {v / roof:6.1%} of roofline  "
                  f"mindscope/this = {C.fmt_ratio(cap['mindscope'], v)}")
        else:
            print(f"  {k:26s} {v}")
    gen = bench_generate(lm, 16 if a.quick else 64)
    print(f"\n== generate, batch 1, greedy: plain {gen['plain_tok_s']:.1f} tok/s, steered "
          f"{gen['steered_tok_s']:.1f} tok/s (overhead {gen['overhead_pct']:+.1f}%), HF generate "
          f"{gen['hf_generate_tok_s']:.1f} tok/s")
    sw = bench_sweep(lm, 32, 8 if a.quick else 32)
    print(f"\n== 32-trial steering sweep: one at a time {sw['one_at_a_time_tok_s']:.1f} tok/s, "
          f"per-row batched {sw['batched_tok_s']:.1f} tok/s -> {sw['speedup']:.1f}x")
    if a.json:
        a.json.write_text(json.dumps({"gemm_gflops": gemm, "roofline_tok_s": roof, "capture": cap,
                                      "generate": gen, "sweep": sw}, indent=1, default=str))


if __name__ == "__main__":
    main()
