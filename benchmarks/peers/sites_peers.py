"""Runs inside the peer venv (benchmarks/.venvs/hooks): nnsight and TransformerLens reading the
sites of bench_sites.py at layer L, each stopping the forward there:

| site | nnsight | TransformerLens (bridge) |
|---|---|---|
| attn_pattern | ``self_attn.output[1]`` (HF eager attention) | ``blocks.L.attn.hook_pattern`` |
| z | ``self_attn.o_proj.input`` | ``blocks.L.attn.hook_z`` |
| mlp_post | ``mlp.down_proj.input`` | ``blocks.L.mlp.hook_post`` |
| module (the MLP's output) | ``mlp.output`` | ``blocks.L.hook_mlp_out`` |

Pattern reads use a copy of the model loaded with ``attn_implementation="eager"`` (HF's sdpa
returns no weights); the other reads use the default (sdpa) copy; nnsight and TransformerLens
each get their own copies (the TL bridge rewires the modules it wraps, which broke nnsight's
reads of a shared model object). mindscope likewise keeps the model's sdpa kernel and
switches to its eager kernel only while a pattern site is hooked.

Protocol as core_peers.py: one JSON line ``{"ready": ...}``, then for every line on stdin one
pass of every runner over all windows and one JSON line ``{"nnsight/z": tok/s, ...}``.

    python sites_peers.py MODEL_FOLDER N T BATCH LAYER
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SITES = ("attn_pattern", "z", "mlp_post", "module")
NN = {  # site -> (needs eager, proxy of layer L's modules)
    "attn_pattern": (True, lambda lay: lay.self_attn.output[1]),
    "z": (False, lambda lay: lay.self_attn.o_proj.input),
    "mlp_post": (False, lambda lay: lay.mlp.down_proj.input),
    "module": (False, lambda lay: lay.mlp.output),
}
TL = {"attn_pattern": "attn.hook_pattern", "z": "attn.hook_z", "mlp_post": "mlp.hook_post",
      "module": "hook_mlp_out"}


def nnsight_runners(models, tok, ids, bs, layer, info):
    out = {}
    try:
        from nnsight import LanguageModel
        lms = {k: LanguageModel(m, tokenizer=tok) for k, m in models.items()}
    except Exception as e:  # noqa: BLE001 - report, never crash the benchmark
        info["nnsight"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
        return out
    for site, (eager, pick) in NN.items():
        lm = lms["eager" if eager else "sdpa"]

        def run(lm=lm, pick=pick):
            kept = []
            for a in range(0, len(ids), bs):
                with torch.no_grad(), lm.trace(ids[a:a + bs]) as tracer:
                    kept.append(pick(lm.model.layers[layer]).save())
                    tracer.stop()
            return kept
        try:
            v = run()[0]
            info[f"nnsight/{site}_shape"] = list(getattr(v, "shape", []))
            out[f"nnsight/{site}"] = run
        except Exception as e:  # noqa: BLE001
            info[f"nnsight/{site}"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
    return out


def tl_runners(folder, models, tok, ids, bs, layer, info):
    out = {}
    try:
        from transformer_lens.model_bridge import TransformerBridge
        tls = {k: TransformerBridge.boot_transformers(folder, hf_model=m, tokenizer=tok,
                                                      device="cpu", dtype=m.dtype)
               for k, m in models.items()}
    except Exception as e:  # noqa: BLE001
        info["transformer_lens"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
        return out
    for site, rel in TL.items():
        tl = tls["eager" if site == "attn_pattern" else "sdpa"]
        hook = f"blocks.{layer}.{rel}"
        if hook not in tl.hook_dict:
            info[f"transformer_lens/{site}"] = f"no hook {hook}"
            continue

        def run(tl=tl, hook=hook):
            kept = []
            for a in range(0, len(ids), bs):
                with torch.no_grad():
                    _, cache = tl.run_with_cache(ids[a:a + bs], names_filter=hook,
                                                 stop_at_layer=layer + 1)
                kept.append(cache[hook])
            return kept
        try:
            v = run()[0]
            info[f"transformer_lens/{site}_shape"] = list(v.shape)
            out[f"transformer_lens/{site}"] = run
        except Exception as e:  # noqa: BLE001
            info[f"transformer_lens/{site}"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
    return out


def main():
    folder, n, T, bs, layer = sys.argv[1], *map(int, sys.argv[2:6])
    tok = AutoTokenizer.from_pretrained(folder)
    def models():  # each peer gets its own copies: the TL bridge rewires the modules it wraps
        return {k: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                        attn_implementation=k).eval()
                for k in ("sdpa", "eager")}
    ids = torch.randint(100, 40000, (n, T), generator=torch.Generator().manual_seed(0))
    info: dict = {}
    runners = {**nnsight_runners(models(), tok, ids, bs, layer, info),
               **tl_runners(folder, models(), tok, ids, bs, layer, info)}
    print(json.dumps({"ready": True, **info}), flush=True)
    for _ in sys.stdin:
        res = {}
        for name, fn in list(runners.items()):
            t = time.perf_counter()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - drop this runner, keep the others
                res[name] = f"failed in a round: {type(e).__name__}: {str(e)[:120]}"
                del runners[name]
                continue
            res[name] = n * T / (time.perf_counter() - t)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
