"""Reading the new sites on the real default model (SmolLM2-135M-Instruct): capture of
``attn_pattern.L`` and ``mlp_post.L`` (every position, early stop after block L) vs the same
read with a plain PyTorch hook, median tokens/s over interleaved rounds.

The plain hooks: ``mlp_post`` = a pre-hook on ``mlp.down_proj`` keeping its input; ``attn_pattern``
= the model switched to HF eager attention and a hook on ``self_attn`` keeping the weights it
returns. Both stop the forward after block L, like ``capture``'s early stop.

    python benchmarks/bench_sites.py [--quick] [--layer 15] [--rounds 5] [--json out.json]
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


def main():
    global LAYER
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
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
    fns = {
        "mlp_post/mindscope": lambda: lm.capture(b, f"mlp_post.{L}", batch_size=bs, progress=False),
        "mlp_post/plain_hook": lambda: plain(lm, b, bs, down, True, lambda args, o: args[0], False),
        "attn_pattern/mindscope": lambda: lm.capture(b, f"attn_pattern.{L}", batch_size=bs,
                                                     progress=False),
        "attn_pattern/plain_hook": lambda: plain(lm, b, bs, attn, False, lambda args, o: o[1], True),
    }
    for fn in fns.values():
        fn()  # warm-up
    samples = {k: [] for k in fns}
    for _ in tqdm(range(a.rounds), desc="rounds", unit="round"):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            samples[k].append(n * T / (time.perf_counter() - t))
    res = {k: statistics.median(v) for k, v in samples.items()}
    print(f"\n== {lm.name}, layer {L}, {n}x{T} tokens, batch {bs}, median of {a.rounds} rounds "
          f"(torch threads {torch.get_num_threads()})")
    for site in ("mlp_post", "attn_pattern"):
        ours, ref = res[f"{site}/mindscope"], res[f"{site}/plain_hook"]
        print(f"{site:13s} mindscope {ours:8.0f} tok/s   plain hook {ref:8.0f} tok/s   "
              f"ratio {ours / ref:.2f}x")
        res[f"{site}/ratio"] = ours / ref
    if a.json:
        a.json.write_text(json.dumps({"results": res, "samples": samples}, indent=2))


if __name__ == "__main__":
    main()
