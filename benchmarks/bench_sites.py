"""Reading sites on the real default model (SmolLM2-135M-Instruct): capture of
``attn_pattern.L``, ``z.L`` (per-head attention output), ``mlp_post.L`` (neurons) and
``module:model.layers.L.mlp`` (every position, early stop after block L) vs the same read with a
plain PyTorch hook, nnsight and TransformerLens (benchmarks/.venvs/hooks, made by
``bench_core.py --setup-peers``; peers/sites_peers.py), and vs the machine's GEMM roofline;
median tokens/s over interleaved rounds (the peers run round by round in their own venv, so one
process computes at a time).

The plain hooks: ``mlp_post`` = a pre-hook on ``mlp.down_proj`` keeping its input; ``z`` = a
pre-hook on ``o_proj``; ``module`` = a hook on ``mlp`` keeping its output; ``attn_pattern`` =
the model switched to HF eager attention and a hook on ``self_attn`` keeping the weights it
returns. All stop the forward after block L, like ``capture``'s early stop.

    python benchmarks/bench_sites.py [--quick] [--layer 15] [--rounds 5] [--no-peers] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402
from bench_core import windows  # noqa: E402

import mindscope as ms  # noqa: E402


class Stop(Exception):
    pass


def plain(lm, b, bs, module, pre: bool, pick, attn_eager: bool):
    """One pass over ``b`` keeping ``pick(args, output)`` of ``module`` (then stop)."""
    kept = []
    cfg = lm.model.config
    old = cfg._attn_implementation
    if attn_eager:
        cfg._attn_implementation = "eager"

    def hook_out(m, args, out):
        kept.append(pick(args, out).detach().clone())
        raise Stop

    def hook_pre(m, args):
        kept.append(pick(args, None).detach().clone())
    h = module.register_forward_pre_hook(hook_pre) if pre else module.register_forward_hook(hook_out)
    stop = None if not pre else lm.block(LAYER).register_forward_hook(
        lambda *a: (_ for _ in ()).throw(Stop()))
    try:
        with torch.no_grad():
            for a in range(0, len(b), bs):
                try:
                    lm.model(input_ids=b.input_ids[a:a + bs], attention_mask=b.attention_mask[a:a + bs])
                except Stop:
                    pass
    finally:
        h.remove()
        if stop is not None:
            stop.remove()
        cfg._attn_implementation = old
    return kept


LAYER = 15
SITES = ("attn_pattern", "z", "mlp_post", "module")
PEERS = ("plain_hook", "nnsight", "transformer_lens")


def main():
    global LAYER
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    ap.add_argument("--no-peers", action="store_true", help="skip nnsight / TransformerLens")
    ap.add_argument("--json", type=Path, help="also write results here")
    a = ap.parse_args()
    LAYER = a.layer
    torch.manual_seed(0)
    lm = ms.load()
    n, T, bs = (8, 128, 4) if a.quick else (32, 128, 8)
    b = windows(lm, n, T)
    L, fam = LAYER, lm.family_spec
    down = lm.block_part(L, fam.mlp_down)
    attn = lm.block_part(L, fam.attn)
    o_proj = lm.block_part(L, fam.o_proj)
    mlp = lm.block_part(L, fam.mlp)
    module = f"module:{fam.layers}.{L}.{fam.mlp}"

    def cap(site):
        return lambda: lm.capture(b, site, batch_size=bs, progress=False)
    fns = {
        "mindscope/mlp_post": cap(f"mlp_post.{L}"),
        "plain_hook/mlp_post": lambda: plain(lm, b, bs, down, True, lambda args, o: args[0], False),
        "mindscope/attn_pattern": cap(f"attn_pattern.{L}"),
        "plain_hook/attn_pattern": lambda: plain(lm, b, bs, attn, False, lambda args, o: o[1], True),
        "mindscope/z": cap(f"z.{L}"),
        "plain_hook/z": lambda: plain(lm, b, bs, o_proj, True, lambda args, o: args[0], False),
        "mindscope/module": cap(module),
        "plain_hook/module": lambda: plain(lm, b, bs, mlp, False, lambda args, o: o, False),
    }
    for fn in fns.values():
        fn()  # warm-up
    peer = None
    if not a.no_peers:
        folder = str(ms.core._load.resolve(lm.name)[0])
        peer = C.PeerRounds("hooks", "sites_peers.py", folder, str(n), str(T), str(bs), str(L))
        print("peers:", json.dumps(peer.info))
    samples = {k: [] for k in fns}
    notes: dict = {}
    try:
        for _ in tqdm(range(a.rounds), desc="rounds", unit="round"):
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                samples[k].append(n * T / (time.perf_counter() - t))
            if peer is not None:
                for k, v in peer.round().items():
                    if isinstance(v, (int, float)):
                        samples.setdefault(k, []).append(v)
                    else:  # a runner that failed (or the peer process's last words)
                        notes[k] = v
    finally:
        if peer is not None:
            peer.close()
    gemm = C.gemm_gflops(torch.float32)
    roof = gemm * 1e9 / C.flops_per_token(lm, L + 1, T)
    res = {k: statistics.median(v) for k, v in samples.items() if v}
    print(f"\n== {lm.name}, layer {L} (early stop), {n}x{T} tokens, batch {bs}, median of "
          f"{a.rounds} interleaved rounds, torch threads {torch.get_num_threads()}, load "
          f"{os.getloadavg()[0]:.1f}; GEMM {gemm:.0f} GFLOP/s -> roofline {roof:.0f} tok/s "
          f"for {L + 1} blocks")
    print(f"{'site':13s} {'mindscope':>10s} {'roofline':>9s}" + "".join(
        f" {p:>16s} {'ratio':>6s}" for p in PEERS))
    ratios = {}
    for site in SITES:
        ours = res[f"mindscope/{site}"]
        line = f"{site:13s} {ours:10.0f} {ours / roof:9.1%}"
        for p in PEERS:
            v = res.get(f"{p}/{site}")
            line += f" {v:16.0f} {ours / v:5.2f}x" if v else f" {'n/a':>16s} {'':>6s}"
            if v:
                ratios[f"{site}/mindscope_over_{p}"] = ours / v
        print(line)
    if peer is not None:
        notes.update({k: v for k, v in peer.info.items() if not k.endswith("_shape") and k != "ready"})
    if notes:
        print("peer notes:", notes)
    if a.json:
        a.json.write_text(json.dumps({"results": res, "ratios": ratios, "samples": samples,
                                      "gemm_gflops": gemm, "roofline_tok_s": roof,
                                      "peer_info": None if peer is None else peer.info,
                                      "notes": notes,
                                      "loadavg": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
