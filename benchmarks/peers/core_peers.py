"""Runs inside the peer venv: nnsight and TransformerLens capture of resid_post.15 (block 15
output) with early stop, on the same token windows. Prints one JSON line."""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, n, T, bs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(folder)
hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
ids = torch.randint(100, 40000, (n, T), generator=torch.Generator().manual_seed(0))
out = {}


def timed(fn):
    fn()
    t = time.perf_counter()
    fn()
    return n * T / (time.perf_counter() - t)


try:
    from nnsight import LanguageModel

    lm = LanguageModel(hf, tokenizer=tok)

    def run_nn():
        for a in range(0, n, bs):
            with torch.no_grad(), lm.trace(ids[a:a + bs]) as tracer:
                h = lm.model.layers[15].output.save()
                tracer.stop()  # nnsight >= 0.4: early stop lives on the tracer
    out["nnsight"] = timed(run_nn)
except Exception as e:  # noqa: BLE001 - report, never crash the benchmark
    out["nnsight"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
try:
    try:  # TransformerLens >= 4: HookedTransformer is gone; the bridge wraps the HF model
        from transformer_lens.model_bridge import TransformerBridge

        tl = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=tok, device="cpu")
        hook = next(k for k in tl.hook_dict if k.startswith("blocks.15.") and k.endswith("hook_out"))
    except ImportError:
        from transformer_lens import HookedTransformer

        tl = HookedTransformer.from_pretrained_no_processing(
            "HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=hf, tokenizer=tok, device="cpu")
        hook = "blocks.15.hook_resid_post"
    out["transformer_lens_hook"] = hook

    def run_tl():
        for a in range(0, n, bs):
            with torch.no_grad():
                tl.run_with_cache(ids[a:a + bs], names_filter=hook, stop_at_layer=16)
    out["transformer_lens"] = timed(run_tl)
except Exception as e:  # noqa: BLE001
    out["transformer_lens"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
print(json.dumps(out))
