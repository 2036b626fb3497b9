"""Runs inside the peer venv (benchmarks/.venvs/hooks): nnsight and TransformerLens capture of
resid_post.15 (block 15 output) with early stop. ``make_runners`` is shared with
harvest_peers.py.

Protocol (so that rounds interleave with mindscope's and only one process computes at a time):
the parent writes one line per round on stdin; for each, this script times one pass of each
peer over all windows and prints one JSON line ``{"nnsight": tok/s, "transformer_lens": tok/s}``.
A first, untimed pass warms each peer up before the first line is answered.

    python core_peers.py MODEL_FOLDER N T BATCH
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def make_runners(folder, hf, tok, ids, bs, layer=15):
    """{"nnsight": fn, "transformer_lens": fn} (each one pass over ``ids`` in batches of bs,
    keeping block ``layer``'s output and stopping there), plus {name: error or hook name}."""
    runners, info = {}, {}
    try:
        from nnsight import LanguageModel

        nn_lm = LanguageModel(hf, tokenizer=tok)

        def run_nn():
            for a in range(0, len(ids), bs):
                with torch.no_grad(), nn_lm.trace(ids[a:a + bs]) as tracer:
                    nn_lm.model.layers[layer].output.save()
                    tracer.stop()  # nnsight >= 0.4: early stop lives on the tracer
        run_nn() if len(ids) else None
        runners["nnsight"] = run_nn
    except Exception as e:  # noqa: BLE001 - report, never crash the benchmark
        info["nnsight"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
    try:
        try:  # TransformerLens >= 4: HookedTransformer is gone; the bridge wraps the HF model
            from transformer_lens.model_bridge import TransformerBridge

            tl = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=tok,
                                                     device="cpu", dtype=hf.dtype)
            hook = next(k for k in tl.hook_dict
                        if k.startswith(f"blocks.{layer}.") and k.endswith("hook_out"))
        except ImportError:
            from transformer_lens import HookedTransformer

            tl = HookedTransformer.from_pretrained_no_processing(
                "HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=hf, tokenizer=tok, device="cpu")
            hook = f"blocks.{layer}.hook_resid_post"
        info["transformer_lens_hook"] = hook

        def run_tl():
            for a in range(0, len(ids), bs):
                with torch.no_grad():
                    tl.run_with_cache(ids[a:a + bs], names_filter=hook, stop_at_layer=layer + 1)
        run_tl()
        runners["transformer_lens"] = run_tl
    except Exception as e:  # noqa: BLE001
        info["transformer_lens"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
    return runners, info


def main():
    folder, n, T, bs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(100, 40000, (n, T), generator=torch.Generator().manual_seed(0))
    runners, info = make_runners(folder, hf, tok, ids, bs)
    print(json.dumps({"ready": True, **info}), flush=True)
    for _ in sys.stdin:
        out = {}
        for name, fn in runners.items():
            t = time.perf_counter()
            fn()
            out[name] = n * T / (time.perf_counter() - t)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
