"""GPU benchmark (needs CUDA; on a machine without it, says so and measures nothing):

1. capture: ``lm.capture`` of the last block's residual vs a bare HF forward (no hidden
   states kept) on the same token windows; goal >= 90% of the bare forward's tokens/s;
2. harvest: ``mindscope.activations.harvest`` of a mid-depth site to disk, tokens/s, next to
   the bare forward up to that block;
3. SAE training: mindscope's trainer (bf16 autocast, the CUDA default) vs sparsify
   (``peers/sae_peers.py --device cuda``, fp32 and bf16-autocast rows) on the same GPU, the
   same activations in the same order; goal >= 1.5x sparsify at equal or lower held-out FVU.

Models are randomly initialised from real configs in bf16 (speed does not depend on the
weights; GPU machines may have no network and little disk): ``1b`` = Llama-3.2-1B's shape
(d 2048, 16 layers, GQA 32/8, MLP 8192, vocab 128256), ``8b`` = Llama-3.1-8B's (d 4096, 32
layers, GQA 32/8, MLP 14336, vocab 128256).

    python benchmarks/bench_gpu.py [--model 1b|8b|both] [--quick] [--setup-peers] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CONFIGS = {
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
               tie_word_embeddings=True, rope_theta=500000.0, max_position_embeddings=8192),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
               tie_word_embeddings=False, rope_theta=500000.0, max_position_embeddings=8192),
}


def needs_cuda() -> str | None:
    if torch.cuda.is_available():
        return None
    return (f"bench_gpu.py needs a CUDA GPU: torch {torch.__version__} (CUDA build: "
            f"{torch.version.cuda or 'none'}) sees none. Run `make bench-gpu` on a GPU machine; "
            "nothing was measured here.")


def build(size: str):
    """A random bf16 Llama of a real size on cuda:0, wrapped as an LM (tiny tokenizer: ids are
    fed directly)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from mindscope.core import LM
    from mindscope.testing import tiny_tokenizer

    cfg = LlamaConfig(**CONFIGS[size], bos_token_id=0, eos_token_id=2, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return LM(model, tiny_tokenizer(), f"random-llama-{size}")


def windows(lm, n: int, T: int):
    from mindscope.core import Batch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, lm.vocab_size, (n, T), generator=g)
    return Batch(ids, torch.ones_like(ids))


def cuda_time(fn, reps: int) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after one warm-up, synchronised."""
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


@torch.no_grad()
def bench_capture(lm, n: int, T: int, bs: int, reps: int) -> dict:
    b = windows(lm, n, T)
    last = f"resid_post.{lm.n_layers - 1}"

    def bare():
        for a in range(0, n, bs):
            lm.model(input_ids=b.input_ids[a:a + bs].cuda(), use_cache=False)

    def ours():
        lm.capture(b, last, batch_size=bs, stop_early=False, progress=False, device="cuda")

    rows = {}
    for name, fn in (("hf_bare_forward", bare), ("mindscope_capture", ours),
                     ("hf_bare_forward_again", bare)):      # bracketing: drift shows
        rows[name] = n * T / cuda_time(fn, reps)
    base = statistics.mean([rows["hf_bare_forward"], rows["hf_bare_forward_again"]])
    rows["capture_vs_bare"] = rows["mindscope_capture"] / base
    return rows


def bench_harvest(lm, n_tokens: int, T: int, bs: int) -> dict:
    from mindscope.activations import harvest

    site = f"resid_post.{lm.n_layers // 2}"
    with tempfile.TemporaryDirectory() as d:
        corpus = Path(d) / "corpus"
        corpus.mkdir()
        words = "the quick brown fox jumps over the lazy dog alice met bob in the garden".split()
        g = torch.Generator().manual_seed(0)
        for i in range(64):
            idx = torch.randint(len(words), (4000,), generator=g).tolist()
            (corpus / f"d{i}.txt").write_text(" ".join(words[j] for j in idx))
        torch.cuda.synchronize()
        t = time.perf_counter()
        st = harvest(lm, Path(d) / "store", sites=site, corpus=corpus, n_tokens=n_tokens,
                     window=T, batch_size=bs, progress=False, store_dtype="bfloat16")
        dt = time.perf_counter() - t
        return {"site": site, "rows": st.manifest["n_tokens"], "harvest_tok_s": n_tokens / dt,
                "seconds": dt}


def bench_sae(lm, steps: int, batch: int, latents: int, k: int, setup_peers: bool) -> dict:
    from safetensors.torch import save_file

    from mindscope.sae import SAEConfig, TrainConfig, Trainer, evaluate

    site = f"resid_post.{lm.n_layers // 2}"
    need, T = steps * batch + 8192, 256
    b = windows(lm, -(-need // T), T)
    acts = lm.capture(b, site, batch_size=16, progress=False)[site].float().cpu()   # (N, d)
    acts = acts[torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(0))]
    train, held = acts[:steps * batch], acts[steps * batch:steps * batch + 8192]
    out: dict = {"d": acts.shape[1], "latents": latents, "k": k, "batch": batch, "steps": steps}

    tc = TrainConfig(steps=steps, lr_decay=0.0, aux_coef=1 / 32, outlier_factor=None)
    tr = Trainer([(SAEConfig("topk", acts.shape[1], latents, k=k), tc)], progress=False,
                 log_every=10 ** 9, device="cuda")
    times: list = []
    dev_train = train.cuda()

    class Timed:
        def iter_from(self, step):
            for s in range(step, steps):
                torch.cuda.synchronize()
                times.append(time.perf_counter())
                yield dev_train[s * batch:(s + 1) * batch]
    [sae] = tr.fit(Timed())
    torch.cuda.synchronize()
    times.append(time.perf_counter())
    dts = [b2 - a2 for a2, b2 in zip(times[1:-1], times[2:])]            # step 0 holds the init
    m = evaluate(sae, [held], outlier_factor=None)
    out["mindscope"] = {"tok_s": batch / statistics.median(dts), "fvu": m["fvu"],
                        "l0": m["l0"], "dead": m["dead_fraction"], "bf16": tr.slots[0].bf16}
    if setup_peers:
        C.ensure_peer_venv("sparsify")
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "acts.safetensors"
        save_file({"train": train.contiguous(), "held": held.contiguous()}, str(f))
        for row, extra in (("sparsify_fp32", []), ("sparsify_bf16_autocast", ["--bf16"])):
            r = C.run_peer("sparsify", "sae_peers.py", "sparsify", str(f), "--latents",
                           str(latents), "--k", str(k), "--batch", str(batch), "--device", "cuda",
                           *extra, timeout=3600)
            out[row] = r
            if "tok_s" in r:
                out[f"mindscope_vs_{row}"] = out["mindscope"]["tok_s"] / r["tok_s"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="both", choices=["1b", "8b", "both"])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and steps (a smoke run)")
    ap.add_argument("--setup-peers", action="store_true", help="create benchmarks/.venvs/sparsify")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    why = needs_cuda()
    if why:
        print(why, file=sys.stderr)
        if a.json:
            Path(a.json).write_text(json.dumps({"skipped": why}, indent=1))
        return 0
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "n_gpus": torch.cuda.device_count()}
    for size in (["1b", "8b"] if a.model == "both" else [a.model]):
        lm = build(size)
        n, T, bs = (16, 512, 8) if a.quick else (128, 1024, 16 if size == "1b" else 8)
        r = {"capture": bench_capture(lm, n, T, bs, reps=2 if a.quick else 5),
             "harvest": bench_harvest(lm, (16 if a.quick else 256) * 1024, 1024, bs)}
        lat = 16 * lm.d_model
        r["sae"] = bench_sae(lm, 20 if a.quick else 200, 4096, lat, 32, a.setup_peers)
        res[size] = r
        print(json.dumps({size: r}, indent=1, default=float))
        del lm
        torch.cuda.empty_cache()
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
