"""CLI for sparse autoencoders: ``mindscope sae train|eval|sweep|plan|convert``.

Thin: parses options and calls ``mindscope.sae``. Reads activations from a store written by
``mindscope harvest`` (``mindscope.activations.ActivationStore``, imported lazily). Under
``torchrun`` (WORLD_SIZE > 1) ``train`` and ``sweep`` run data parallel (gloo on CPU).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from .activations import parse_count

app = typer.Typer(help="Sparse autoencoders and transcoders: train, evaluate, sweep, plan.",
                  no_args_is_help=True)
log = logging.getLogger("mindscope.sae")


_count = parse_count  # '2M' -> 2_000_000 (shared with `mindscope harvest`)


def _list(text: str, conv) -> list:
    return [conv(t) for t in text.split(",") if t.strip()]


def _lr(text: str):
    from mindscope.sae import parse_lr

    try:
        return parse_lr(text)  # "<m>x" stays a string, resolved per width by sae.sweep
    except ValueError as e:
        raise typer.BadParameter(f"--lrs: {e}; use a number, 'auto' or a multiple like '2x'") from None


def _setup(quiet: bool):
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")


def _store(path: Path, site: Optional[str]):
    from mindscope.activations import ActivationStore

    store = ActivationStore.open(path)
    m = store.manifest
    sites = m.get("sites") or [m.get("site")]
    site = site or (sites[0] if len(sites) == 1 else None)
    if site is None:
        raise typer.BadParameter(f"{path} holds sites {sites}; choose one with --site")
    return store, site, int(m["d_model"]), m.get("model", "")


def _heldout(store, site, batch_size, n_batches):
    from mindscope.sae import StoreBatches

    import itertools
    return list(itertools.islice(iter(StoreBatches(store, batch_size, 0, "heldout", site)), n_batches))


@app.command("train")
def train_cmd(
    store: Path = typer.Option(..., "--store", help="Activation store folder (mindscope harvest)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (resumes from its checkpoint)."),
    arch: str = typer.Option("topk", "--arch", help="relu | topk | batchtopk | jumprelu."),
    latents: str = typer.Option("9216", "--latents", help="Latents; a comma list trains several SAEs from one stream."),
    k: int = typer.Option(32, "--k", help="Active latents per row (topk, batchtopk)."),
    tokens: str = typer.Option("2M", "--tokens", help="Training tokens, e.g. 2M."),
    batch_size: int = typer.Option(4096, "--batch-size", help="Rows per step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam LR (default depends on arch/width)."),
    l1: float = typer.Option(5.0, "--l1", help="relu: lambda of the decoder-norm-weighted L1."),
    l0: float = typer.Option(1e-3, "--l0", help="jumprelu: lambda of the L0 penalty."),
    site: Optional[str] = typer.Option(None, "--site", help="Site in the store (if it holds several)."),
    outlier_factor: float = typer.Option(10.0, "--outlier-factor", help="Drop rows with norm > this x batch median (0 = keep all)."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Steps between checkpoints."),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16", help="Encoder matmul in bfloat16 (default: on for CUDA, off on CPU)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (under torchrun: the rank's GPU)."),
    seed: int = typer.Option(0, "--seed", help="Init and data-order seed."),
    eval_batches: int = typer.Option(8, "--eval-batches", help="Held-out batches for the final metrics."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train SAE(s) on a store; writes <out>/<name>/{cfg.json,sae.safetensors,metrics.json,*.png}."""
    _setup(quiet)
    from mindscope.sae import (SAEConfig, StoreBatches, TrainConfig, Trainer, evaluate,
                               init_distributed, plot_density, shutdown_distributed)

    rank, _, dev = init_distributed(device)
    st, site, d, model = _store(store, site)
    steps = max(1, _count(tokens) // batch_size)
    specs = [(SAEConfig(arch, d, n, k=k, model=model, site=site,
                        excluded_rows=f"norm > {outlier_factor:g} x batch median" if outlier_factor else ""),
              TrainConfig(steps=steps, lr=lr, l1_coef=l1, l0_coef=l0, bf16=bf16, seed=seed,
                          outlier_factor=outlier_factor or None))
             for n in _list(latents, _count)]
    tr = Trainer(specs, out, checkpoint_every=checkpoint_every, progress=not quiet, device=dev)
    saes = tr.fit(StoreBatches(st, batch_size, seed, "train", site))
    shutdown_distributed()
    if rank != 0:
        return
    held = _heldout(st, site, batch_size, eval_batches)
    summary = []
    for s, sae in zip(tr.slots, saes):
        m = evaluate(sae, held, outlier_factor=outlier_factor or None)
        m.pop("density")
        m["tokens_per_s"] = tr.tokens_per_s
        from ..core import atomic_write_text
        atomic_write_text(out / s.name / "metrics.json", json.dumps(m, indent=2))
        plot_density(m, out / s.name / "density.png", title=s.name)
        summary.append({"name": s.name, **{k: m[k] for k in ("fvu", "l0", "dead_fraction", "mse")}})
    typer.echo(json.dumps(summary, indent=2))


@app.command("eval")
def eval_cmd(
    sae_dir: Path = typer.Option(..., "--sae", help="SAE folder (mindscope, SAELens or sparsify layout)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Store for held-out activation metrics."),
    site: Optional[str] = typer.Option(None, "--site"),
    batches: int = typer.Option(8, "--batches", help="Held-out batches."),
    batch_size: int = typer.Option(4096, "--batch-size"),
    model: Optional[str] = typer.Option(None, "--model", help="Also splice into this model: CE increase, KL, CE recovered."),
    texts: int = typer.Option(32, "--texts", help="Documents of the default corpus for model metrics."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Metrics of a trained SAE on held-out activations and/or spliced into the model."""
    _setup(quiet)
    from mindscope.sae import evaluate, load_any, model_metrics

    sae = load_any(sae_dir)
    out: dict = {}
    if store is not None:
        st, site_, _, _ = _store(store, site or sae.cfg.site or None)
        m = evaluate(sae, _heldout(st, site_, batch_size, batches))
        m.pop("density")
        out["activations"] = m
    if model is not None:
        import mindscope as ms
        from mindscope.activations import open_corpus

        lm = ms.load(model)
        docs = [d.text for d in open_corpus("default") if d.text][:texts]
        out["model"] = model_metrics(lm, sae, [t[:2000] for t in docs], site=site)
    if not out:
        raise typer.BadParameter("give --store and/or --model")
    typer.echo(json.dumps(out, indent=2))


@app.command("sweep")
def sweep_cmd(
    store: Path = typer.Option(..., "--store"),
    out: Path = typer.Option(..., "--out", "-o"),
    arch: str = typer.Option("topk", "--arch"),
    latents: str = typer.Option("1152,2304,4608", "--latents", help="Comma list."),
    tokens: str = typer.Option("250k,500k,1M", "--tokens", help="Comma list."),
    lrs: str = typer.Option("auto", "--lrs", help="Comma list of learning rates: numbers, 'auto' (the "
                            "width-scaled default, 2e-4/sqrt(n/2^14) for topk) or multiples of it "
                            "like '0.5x,1x,2x'."),
    budget: Optional[float] = typer.Option(None, "--budget", help="Skip configs above this many FLOPs (C = 6 d n T)."),
    k: int = typer.Option(32, "--k"),
    batch_size: int = typer.Option(4096, "--batch-size"),
    site: Optional[str] = typer.Option(None, "--site"),
    eval_batches: int = typer.Option(4, "--eval-batches"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (under torchrun: the rank's GPU)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train a (latents x tokens x lr) grid from one stream and fit scaling laws."""
    _setup(quiet)
    from mindscope.sae import (SAEConfig, StoreBatches, TrainConfig, init_distributed,
                               shutdown_distributed, train_sweep)

    grid = dict(n_latents=_list(latents, _count), tokens=_list(tokens, _count), lrs=_list(lrs, _lr))
    _, _, dev = init_distributed(device)
    st, site, d, model = _store(store, site)
    res = train_sweep(StoreBatches(st, batch_size, 0, "train", site), _heldout(st, site, batch_size, eval_batches),
                SAEConfig(arch, d, 2 * d, k=k, model=model, site=site), TrainConfig(steps=1),
                **grid, batch_size=batch_size, budget=budget, out_dir=out,
                progress=not quiet, device=dev)
    shutdown_distributed()
    typer.echo(json.dumps(res["laws"], indent=2))


@app.command("plan")
def plan_cmd(
    budget: float = typer.Option(..., "--budget", help="Training compute in FLOPs (C = 6 d n T)."),
    sweep_dir: Path = typer.Option(..., "--sweep", help="Folder of a finished `sae sweep` (sweep.json)."),
):
    """Recommend n_latents, tokens and lr for a compute budget from a sweep's fitted laws."""
    from mindscope.core import need, need_int, read_json
    from mindscope.sae import plan

    p = sweep_dir / "sweep.json"
    if not p.exists():
        raise typer.BadParameter(f"{p} not found; run `mindscope sae sweep --out {sweep_dir}` first")
    s = read_json(p, expect=dict, what="sweep record",
                  fix=f"run `mindscope sae sweep --out {sweep_dir}` again")
    typer.echo(json.dumps(plan(budget, need(s, "laws", dict, p), need_int(s, "d", p, 1)),
                          indent=2))


@app.command("convert")
def convert_cmd(
    src: Path = typer.Argument(..., help="SAE folder (mindscope, SAELens or sparsify)."),
    dst: Path = typer.Argument(..., help="Output folder."),
    to: str = typer.Option("mindscope", "--to", help="mindscope | saelens | sparsify."),
):
    """Convert between SAE folder layouts."""
    from mindscope.sae import export_saelens, export_sparsify, load_any

    sae = load_any(src)
    {"mindscope": lambda: sae.save(dst), "saelens": lambda: export_saelens(sae, dst),
     "sparsify": lambda: export_sparsify(sae, dst)}[to]()
    typer.echo(str(dst))


if __name__ == "__main__":
    app()
