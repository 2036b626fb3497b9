"""Runs inside a peer venv: peers' activation harvesting of resid_post.15 on the token windows
bench_harvest.py wrote, at one dtype; prints one JSON line of tokens/s (best of --repeats).

    python harvest_peers.py hooks   MODEL_FOLDER IDS.safetensors float32 BATCH [--repeats R]
    python harvest_peers.py saelens MODEL_FOLDER IDS.safetensors float32 BATCH [--repeats R]

* ``hooks`` (benchmarks/.venvs/hooks): nnsight (trace + save + tracer.stop()) and
  TransformerLens run_with_cache(stop_at_layer=16), activations kept in memory -- the issue's
  "peer in-memory capture" bar (same runners as core_peers.py).
* ``saelens`` (benchmarks/.venvs/saelens): SAELens' ``CacheActivationsRunner`` end to end
  (its ActivationsStore forward through an HF model wrapped by HookedProxyLM, then HF-datasets
  Arrow shards on disk), on a pre-tokenized dataset of the same windows, no shuffle. Only
  ``run()`` is timed (the model load is not, as for mindscope). Its store is always float32:
  Arrow has no bfloat16 (with --dtype bfloat16 the model runs in bf16, the shards hold fp32).
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

LAYER = 15


def best_of(fn, repeats, n_tokens):
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = max(best, n_tokens / (time.perf_counter() - t))
    return best


def hooks(a, ids, dtype):
    sys.path.insert(0, str(Path(__file__).parent))
    from core_peers import make_runners

    tok = AutoTokenizer.from_pretrained(a.folder)
    hf = AutoModelForCausalLM.from_pretrained(a.folder, dtype=dtype).eval()
    runners, info = make_runners(a.folder, hf, tok, ids, a.batch, LAYER)
    out = {k: v for k, v in info.items() if k in ("nnsight", "transformer_lens")}
    for name, fn in runners.items():
        out[name] = best_of(fn, a.repeats, ids.numel())
    return out


def saelens(a, ids, dtype):
    from datasets import Dataset, load_from_disk
    from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig

    N, T = ids.shape
    ds = Dataset.from_dict({"input_ids": ids.tolist()})
    shard_tokens = 4096
    d = AutoConfig.from_pretrained(a.folder).hidden_size
    tmp = Path(tempfile.mkdtemp())
    times = []
    try:
        for r in range(a.repeats):
            cfg = CacheActivationsRunnerConfig(
                dataset_path=str(tmp / "unused"), model_name=a.folder,
                model_class_name="AutoModelForCausalLM", hook_name=f"model.layers.{LAYER}",
                d_in=d, training_tokens=N * T, context_size=T, model_batch_size=a.batch,
                new_cached_activations_path=str(tmp / f"out{r}"), shuffle=False,
                dtype="float32", device="cpu", prepend_bos=False, streaming=False,
                buffer_size_gb=shard_tokens * d * 4 / 1e9,
                model_from_pretrained_kwargs={"dtype": dtype})
            runner = CacheActivationsRunner(cfg, override_dataset=ds)
            t = time.perf_counter()
            runner.run()
            times.append(time.perf_counter() - t)
            # it rounds the token count up to whole buffers (re-reading the dataset), so count
            # what it actually wrote
            written = load_from_disk(str(tmp / f"out{r}")).num_rows * T
            del runner
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"sae_lens_cache_runner": written / min(times), "sae_lens_tokens_written": written}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["hooks", "saelens"])
    ap.add_argument("folder")
    ap.add_argument("ids")
    ap.add_argument("dtype", choices=["float32", "bfloat16"])
    ap.add_argument("batch", type=int)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    ids = load_file(a.ids)["ids"].long()
    dtype = getattr(torch, a.dtype)
    try:
        out = (hooks if a.mode == "hooks" else saelens)(a, ids, dtype)
    except Exception as e:  # noqa: BLE001 - report, never crash the benchmark
        out = {"error": f"{a.mode}: {type(e).__name__}: {str(e)[:200]}"}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
