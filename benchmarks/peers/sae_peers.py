"""Runs inside a peer venv (benchmarks/.venvs/sparsify or .venvs/saelens): train one TopK SAE
with the peer's own SAE class and optimizer step on the activations that bench_sae.py wrote,
then print one JSON line (tokens/s from per-step times, held-out FVU, dead fraction, L0).

    python sae_peers.py sparsify DATA.safetensors --latents 9216 --k 32 --batch 4096 --lr 2.8e-4

DATA.safetensors holds ``train`` (steps*batch, d) in the order the batches are consumed (step s
uses rows [s*batch, (s+1)*batch)) and ``held`` (N, d); outlier rows were already removed.
Everything outside the step loop (imports, data loading, evaluation) is not timed.

What each peer does per step (their code, their defaults unless stated):
* sparsify (eai-sparsify, ``sparsify.SparseCoder``): the body of ``sparsify.Trainer.fit`` for
  loss_fn='fvu', optimizer='adam': b_dec = mean of the first batch, decoder re-normalised before
  the forward, loss = fvu + auxk_alpha * auxk_loss, ``remove_gradient_parallel_to_decoder_
  directions``, ``torch.optim.Adam`` step, dead-latent counters. Changed from its defaults:
  optimizer adam (its default is signum), no LR warm-up (its adam default is 1000 steps),
  auxk_alpha = 1/32 (its default 0) -- the hyper-parameters of the other trainers.
* saelens (sae-lens 6.x): ``TopKTrainingSAE`` + ``SAETrainer.step`` (its public per-step seam:
  training_forward_pass, dead-neuron bookkeeping, grad clip 1.0, Adam, LR scheduler), the
  same calls ``SAETrainer.fit`` makes. Changed from its defaults: k, d_sae, lr (constant),
  aux_loss_coefficient = 1/32 (its default 1.0). b_dec starts at zero (SAELens 6 has no b_dec
  initialisation option); ``--b-dec-mean`` sets it to the first batch's mean instead.
"""
import argparse
import json
import statistics
import time

import torch
from safetensors.torch import load_file

ap = argparse.ArgumentParser()
ap.add_argument("peer", choices=["sparsify", "saelens"])
ap.add_argument("data")
ap.add_argument("--latents", type=int, default=9216)
ap.add_argument("--k", type=int, default=32)
ap.add_argument("--batch", type=int, default=4096)
ap.add_argument("--lr", type=float, default=None)
ap.add_argument("--aux", type=float, default=1 / 32)
ap.add_argument("--b-dec-mean", action="store_true")
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--device", default="cpu", help="cpu or cuda (sparsify only; bench_gpu.py)")
ap.add_argument("--bf16", action="store_true", help="sparsify forward under bf16 autocast")
args = ap.parse_args()
DEV = torch.device(args.device)


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


if args.threads:
    torch.set_num_threads(args.threads)
torch.manual_seed(0)
data = load_file(args.data)
train, held = data["train"].float().to(DEV), data["held"].float().to(DEV)
d, B, n = train.shape[1], args.batch, args.latents
steps = train.shape[0] // B
lr = args.lr or 2e-4 / (n / 2 ** 14) ** 0.5
out = {"peer": args.peer, "steps": steps, "tokens": steps * B, "lr": lr,
       "threads": torch.get_num_threads()}


def batch(s):
    return train[s * B:(s + 1) * B]


def fvu_dead(recon, codes_fired):
    with torch.no_grad():
        fvu = float((held - recon).double().pow(2).sum() / (held - held.mean(0)).double().pow(2).sum())
    return fvu, 1.0 - float(codes_fired.float().mean())


def run_sparsify():
    from importlib.metadata import version

    from sparsify import SparseCoder, SparseCoderConfig
    out["version"] = version("eai-sparsify")
    sae = SparseCoder(d, SparseCoderConfig(num_latents=n, k=args.k), device=DEV, dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(n, dtype=torch.long, device=DEV)
    dead_threshold = 10_000_000
    times = []
    for s in range(steps):
        x = batch(s)
        sync()
        t0 = time.perf_counter()
        if s == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = since_fired > dead_threshold if args.aux > 0 else None
        # --bf16: the forward under bf16 autocast, as mindscope trains on CUDA (like for like)
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=args.bf16):
            o = sae(x=x, y=x, dead_mask=dead_mask, total_variance=(x - x.mean(0)).pow(2).sum())
        did_fire = torch.zeros(n, dtype=torch.bool, device=DEV)
        did_fire[o.latent_indices.flatten()] = True
        (o.fvu + args.aux * o.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired += x.shape[0]
            since_fired[did_fire] = 0
        sync()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        sae.set_decoder_norm_to_unit_norm()
        o = sae(held)
        fired = torch.zeros(n, dtype=torch.bool, device=DEV)
        fired[o.latent_indices[o.latent_acts > 0].flatten()] = True
        l0 = float((o.latent_acts > 0).sum(-1).float().mean())
        return times, o.sae_out, fired, l0


def run_saelens():
    from importlib.metadata import version

    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    out["version"] = version("sae-lens")
    cfg = TopKTrainingSAEConfig(d_in=d, d_sae=n, k=args.k, dtype="float32", device="cpu",
                                aux_loss_coefficient=args.aux)
    sae = TopKTrainingSAE(cfg)
    tcfg = SAETrainerConfig(total_training_samples=steps * B, train_batch_size_samples=B, lr=lr,
                            lr_scheduler_name="constant", lr_end=lr, device="cpu")
    trainer = SAETrainer(tcfg, sae, data_provider=iter(()))
    times = []
    for s in range(steps):
        x = batch(s)
        t0 = time.perf_counter()
        if s == 0 and args.b_dec_mean:
            sae.b_dec.data = x.mean(0)
        trainer.maybe_reset_sparsity()
        trainer.step(x)
        trainer.n_training_steps += 1
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        sae.eval()
        f = sae.encode(held)
        recon = sae.decode(f)
        if f.is_sparse:
            f = f.to_dense()
        return times, recon, (f > 0).any(0), float((f > 0).sum(-1).float().mean())


try:
    t_all = time.perf_counter()
    times, recon, fired, l0 = {"sparsify": run_sparsify, "saelens": run_saelens}[args.peer]()
    out["wall_s"] = time.perf_counter() - t_all
    steady = times[1:] or times                      # step 0 includes one-off initialisation
    out["tok_s"] = B / statistics.median(steady)
    out["tok_s_best"] = B / min(steady)
    out["fvu"], out["dead"] = fvu_dead(recon, fired)
    out["l0"] = l0
except Exception as e:  # noqa: BLE001 - report precisely, never crash the benchmark
    import traceback
    tb = traceback.extract_tb(e.__traceback__)[-1]
    out["error"] = f"{type(e).__name__}: {str(e)[:300]} (at {tb.filename.split('site-packages/')[-1]}:{tb.lineno})"
print(json.dumps(out))
