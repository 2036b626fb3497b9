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

from ._common import load_model, need_path, positive, print_fields, print_table
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

    need_path(path, "--store", "folder", "harvest one first (mindscope harvest --out DIR)")
    store = ActivationStore.open(path)
    m = store.manifest
    sites = m.get("sites") or [m.get("site")]
    site = site or (sites[0] if len(sites) == 1 else None)
    if site is None:
        raise typer.BadParameter(f"{path} holds sites {sites}; choose one with --site")
    return store, site, int(m["d_model"]), m.get("model", "")


def _heldout(store, site, batch_size, n_batches):
    """Every held-out row up to ``n_batches`` batches, the last partial batch included."""
    from mindscope.sae import heldout_batches

    return heldout_batches(store, batch_size, site=site, max_batches=n_batches)


def _sae_arg(spec: str):
    """``--sae``: a folder (mindscope, SAELens or sparsify layout) or a registered name."""
    from mindscope.sae import load_any

    try:
        return load_any(spec)
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="--sae") from None


@app.command("train")
def train_cmd(
    store: Path = typer.Option(..., "--store", help="Activation store folder (mindscope harvest)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (resumes from its checkpoint)."),
    arch: str = typer.Option("topk", "--arch", help="An architecture of mindscope.sae.archs: "
                             "relu | topk | batchtopk | jumprelu | matryoshka."),
    latents: str = typer.Option("9216", "--latents", help="Latents; a comma list trains several SAEs from one stream."),
    k: int = typer.Option(32, "--k", min=1, help="Active latents per row (topk, batchtopk)."),
    tokens: str = typer.Option("2M", "--tokens", help="Training tokens, e.g. 2M."),
    batch_size: int = typer.Option(4096, "--batch-size", min=1, help="Rows per step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam LR (default depends on arch/width)."),
    l1: float = typer.Option(5.0, "--l1", min=0.0, help="relu: lambda of the decoder-norm-weighted L1."),
    l0: float = typer.Option(1e-3, "--l0", min=0.0, help="jumprelu: lambda of the L0 penalty."),
    site: Optional[str] = typer.Option(None, "--site", help="Site in the store (if it holds several)."),
    outlier_factor: float = typer.Option(10.0, "--outlier-factor", min=0.0, help="Drop rows with norm > this x batch median (0 = keep all)."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", min=1, help="Steps between checkpoints."),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16", help="Encoder matmul in bfloat16 (default: on for CUDA, off on CPU)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (under torchrun: the rank's GPU)."),
    seed: int = typer.Option(0, "--seed", help="Init and data-order seed."),
    eval_batches: int = typer.Option(8, "--eval-batches", min=1, help="Held-out batches for the final metrics."),
    register_as: Optional[str] = typer.Option(None, "--register", help="Also register the (first) SAE under this name in the local registry ('auto': MODEL/SITE/ARCH-N)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train SAE(s) on a store; writes <out>/<name>/{cfg.json,sae.safetensors,metrics.json,*.png}."""
    _setup(quiet)
    positive(lr, "--lr")
    n_tokens = _count(tokens, "--tokens")
    widths = [_count(t, "--latents") for t in latents.split(",") if t.strip()]
    from mindscope.sae import archs
    if archs.get(arch).uses_k:
        for n in widths:
            if k > n:
                raise typer.BadParameter(f"--k {k} is larger than --latents {n}", param_hint="--k")
    from mindscope.core import atomic_write_json
    from mindscope.sae import (SAEConfig, StoreBatches, TrainConfig, Trainer, evaluate,
                               init_distributed, plot_density, shutdown_distributed)

    rank, _, dev = init_distributed(device)
    st, site, d, model = _store(store, site)
    steps = max(1, n_tokens // batch_size)
    specs = [(SAEConfig(arch, d, n, k=k, model=model, site=site,
                        excluded_rows=f"norm > {outlier_factor:g} x batch median" if outlier_factor else ""),
              TrainConfig(steps=steps, lr=lr, l1_coef=l1, l0_coef=l0, bf16=bf16, seed=seed,
                          outlier_factor=outlier_factor or None))
             for n in widths]
    tr = Trainer(specs, out, checkpoint_every=checkpoint_every, progress=not quiet, device=dev)
    saes = tr.fit(StoreBatches(st, batch_size, seed, "train", site))
    shutdown_distributed()
    if rank != 0:
        return
    try:  # the SAEs are saved: a failing evaluation must not lose them, only their metrics
        held, err = _heldout(st, site, batch_size, eval_batches), None
    except ValueError as e:
        held, err = None, str(e)
        log.warning("trained SAEs are saved under %s but not evaluated: %s", out, e)
    summary = []
    for s, sae in zip(tr.slots, saes):
        if held is not None:
            m = evaluate(sae, held, outlier_factor=outlier_factor or None)
            m.pop("density")
        else:
            m = {"fvu": None, "l0": None, "dead_fraction": None, "mse": None, "eval_error": err}
        m["tokens_per_s"] = tr.tokens_per_s
        atomic_write_json(out / s.name / "metrics.json", m)
        if held is not None:
            plot_density(m, out / s.name / "density.png", title=s.name)
        summary.append({"name": s.name, **{k: m[k] for k in ("fvu", "l0", "dead_fraction", "mse")}})
    if register_as:
        from mindscope.sae import register

        name = register(out / tr.slots[0].name, None if register_as == "auto" else register_as)
        summary[0]["registered"] = name
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        print_table(summary, title=f"SAEs trained on {n_tokens:,} tokens of {site} -> {out}")


@app.command("eval")
def eval_cmd(
    sae_dir: str = typer.Option(..., "--sae", help="SAE folder (mindscope, SAELens or sparsify layout) or a registered name (sae list)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Store for held-out activation metrics."),
    site: Optional[str] = typer.Option(None, "--site"),
    batches: int = typer.Option(8, "--batches", min=1, help="Held-out batches at most (every held-out row if fewer)."),
    batch_size: int = typer.Option(4096, "--batch-size", min=1),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Also splice into this model: CE increase, KL, CE recovered."),
    texts: int = typer.Option(32, "--texts", min=1, help="Documents of the default corpus for model metrics."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Metrics of a trained SAE on held-out activations and/or spliced into the model."""
    _setup(quiet)
    if store is None and model is None:
        raise typer.BadParameter("give --store and/or --model")
    need_path(store, "--store", "folder", "harvest one first (mindscope harvest --out DIR)")
    from mindscope.sae import evaluate, model_metrics

    sae = _sae_arg(sae_dir)
    out: dict = {}
    if store is not None:
        st, site_, _, _ = _store(store, site or sae.cfg.site or None)
        m = evaluate(sae, _heldout(st, site_, batch_size, batches))
        m.pop("density")
        out["activations"] = m
    if model is not None:
        from mindscope.activations import open_corpus

        lm = load_model(model, quiet=quiet)
        docs = [d.text for d in open_corpus("default") if d.text][:texts]
        out["model"] = model_metrics(lm, sae, [t[:2000] for t in docs], site=site)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    for part, m in out.items():
        print_fields({k: v for k, v in m.items() if not isinstance(v, (list, dict))},
                     title=f"{sae_dir}: {part} metrics")


@app.command("list")
def list_cmd(
    registry: Optional[Path] = typer.Option(None, "--registry", help="Registry folder (default $MINDSCOPE_SAE_REGISTRY or ~/.cache/mindscope/saes)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """The SAEs of the local registry: load one with ``--sae NAME`` or ``SAE.load("NAME")``."""
    from mindscope.sae import list_saes, registry_dir

    rows = list_saes(registry)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no SAEs registered in {registry_dir(registry)}; add one with "
                   "`mindscope sae register --sae FOLDER` (the demo registers its SAE)")
        return
    print_table([{"name": r["name"], "model": r.get("model"), "site": r.get("hook_name"),
                  "arch": r.get("architecture"), "d_sae": r.get("d_sae"), "l0": r.get("l0"),
                  "var. explained": r.get("variance_explained"),
                  "path": r.get("path") if r.get("exists") else f"(missing) {r.get('path')}"}
                 for r in rows], title=f"SAE registry {registry_dir(registry)}")


@app.command("register")
def register_cmd(
    sae: Optional[Path] = typer.Option(None, "--sae", help="SAE folder (mindscope, SAELens or sparsify layout)."),
    folder: Optional[Path] = typer.Argument(None, hidden=True),
    name: Optional[str] = typer.Option(None, "--name", help="Registry name (default MODEL/SITE/ARCH-N)."),
    release: str = typer.Option("local", "--release", help="Release label kept in the metadata."),
    registry: Optional[Path] = typer.Option(None, "--registry", help="Registry folder."),
):
    """Register an SAE folder by name (a link with SAELens-style metadata; nothing is copied)."""
    from mindscope.sae import register

    from ._common import pick_sae

    folder = Path(pick_sae(str(sae) if sae else None, folder))
    need_path(folder, "--sae", "folder")
    typer.echo(register(folder, name, registry=registry, release=release))


@app.command("sweep")
def sweep_cmd(
    store: Path = typer.Option(..., "--store"),
    out: Path = typer.Option(..., "--out", "-o"),
    arch: str = typer.Option("topk", "--arch", help="An architecture of mindscope.sae.archs."),
    latents: str = typer.Option("1152,2304,4608", "--latents", help="Comma list."),
    tokens: str = typer.Option("250k,500k,1M", "--tokens", help="Comma list."),
    lrs: str = typer.Option("auto", "--lrs", help="Comma list of learning rates: numbers, 'auto' (the "
                            "width-scaled default, 2e-4/sqrt(n/2^14) for topk) or multiples of it "
                            "like '0.5x,1x,2x'."),
    budget: Optional[float] = typer.Option(None, "--budget", help="Skip configs above this many FLOPs (C = 6 d n T)."),
    k: int = typer.Option(32, "--k", min=1),
    batch_size: int = typer.Option(4096, "--batch-size", min=1),
    site: Optional[str] = typer.Option(None, "--site"),
    eval_batches: int = typer.Option(4, "--eval-batches", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
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
    if as_json:
        typer.echo(json.dumps(res["laws"], indent=2))
    else:
        print_table([{"law": k, **({kk: vv for kk, vv in v.items() if not isinstance(vv, (list, dict))}
                                   if isinstance(v, dict) else {"value": v})}
                     for k, v in res["laws"].items()], title=f"scaling laws fitted on {out}")


@app.command("plan")
def plan_cmd(
    budget: float = typer.Option(..., "--budget", min=1.0, help="Training compute in FLOPs (C = 6 d n T)."),
    sweep_dir: Path = typer.Option(..., "--sweep", help="Folder of a finished `sae sweep` (sweep.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Recommend n_latents, tokens and lr for a compute budget from a sweep's fitted laws."""
    from mindscope.core import need, need_int, read_json
    from mindscope.sae import plan

    p = sweep_dir / "sweep.json"
    if not p.exists():
        raise typer.BadParameter(f"{p} not found; run `mindscope sae sweep --out {sweep_dir}` first")
    s = read_json(p, expect=dict, what="sweep record",
                  fix=f"run `mindscope sae sweep --out {sweep_dir}` again")
    rec = plan(budget, need(s, "laws", dict, p), need_int(s, "d", p, 1))
    if as_json:
        typer.echo(json.dumps(rec, indent=2))
    else:
        print_fields(rec, title=f"plan for {budget:.3g} FLOPs from {p}")


@app.command("bench")
def bench_cmd(
    saes: list[Path] = typer.Option(..., "--sae", help="SAE folder (mindscope, SAELens or sparsify); repeat for several."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model the SAEs were trained on."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for bench.json, pareto.png and report.html."),
    docs: int = typer.Option(90, "--docs", help="Documents of the default corpus (a third each prose, code, chat)."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds of the probe splits and samples (intervals over seeds)."),
    tasks: str = typer.Option("corpus_kind,first_letter,token_class", "--tasks", help="Comma list of probing tasks."),
    core: bool = typer.Option(True, "--core/--no-core", help="Splice each SAE into the model: CE increase, KL."),
    latents: int = typer.Option(40, "--autointerp-latents", help="Latents scored by the offline detection judge."),
    batch_size: int = typer.Option(8, "--batch-size", help="Documents per forward pass."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Compare SAEs: core metrics, k-sparse probing, absorption, TPP, auto-interp detection."""
    _setup(quiet)
    from mindscope.sae import BenchConfig, bench, load_any, write_bench

    cfg = BenchConfig(n_docs=docs, seeds=seeds, tasks=tuple(t for t in tasks.split(",") if t),
                      core=core, autointerp_latents=latents, batch_size=batch_size)
    loaded = {}
    for p in saes:
        name = p.name if p.name not in loaded else f"{p.parent.name}/{p.name}"
        loaded[name] = load_any(p)
    import mindscope as ms
    lm = ms.load(model)
    res = bench(loaded, lm, cfg, progress=not quiet)
    write_bench(res, out)
    _bench_page(res, out)
    typer.echo(str(out / "report.html"))


def _bench_page(res: dict, out: Path) -> Path:
    from mindscope.report import Page, png, table

    keys = sorted({k for r in res["saes"].values() for k in r["scores"]})
    rows = []
    for name, r in res["saes"].items():
        row = {"SAE": name, "arch": r["arch"], "latents": r["n_latents"], "L0": round(r["l0"], 1),
               "FVU": round(r["fvu"], 4), "dead": round(r["dead"], 3)}
        for k in ("ce_increase", "kl"):
            if k in r:
                row[k] = round(r[k], 4)
        rows.append(row)
    score_rows = [{"metric": k, **{n: f"{r['scores'][k]['mean']:.3f} ± {r['scores'][k]['ci95']:.3f}"
                                   for n, r in res["saes"].items() if k in r["scores"]}} for k in keys]
    page = Page("SAE bench", f"{res['model']}; {res['config']['seeds']} seeds, 95 % t-intervals")
    page.section("Core", table(rows))
    page.section("Pareto over L0", png(out / "pareto.png", alt="metrics vs L0"))
    page.section("Scores", table(score_rows))
    page.section("Missing", table([{"metric": k, "why": v} for k, v in res["missing"].items()]))
    return page.save(out / "report.html")


@app.command("convert")
def convert_cmd(
    sae: Optional[str] = typer.Option(None, "--sae", help="SAE folder (mindscope, SAELens or sparsify) or a registered name."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder."),
    src_old: Optional[str] = typer.Argument(None, hidden=True),
    dst_old: Optional[Path] = typer.Argument(None, hidden=True),
    to: str = typer.Option("mindscope", "--to", help="mindscope | saelens | sparsify."),
):
    """Convert between SAE folder layouts."""
    from mindscope.sae import export_saelens, export_sparsify

    from ._common import pick_sae, renamed

    sae = pick_sae(sae, src_old)
    dst = renamed(dst_old, out, "the positional output folder", "--out")
    if dst is None:
        raise typer.BadParameter("give the output folder", param_hint="--out")
    if to not in ("mindscope", "saelens", "sparsify"):
        raise typer.BadParameter(f"{to!r}; use mindscope, saelens or sparsify", param_hint="--to")
    s = _sae_arg(sae)
    {"mindscope": lambda: s.save(dst), "saelens": lambda: export_saelens(s, dst),
     "sparsify": lambda: export_sparsify(s, dst)}[to]()
    typer.echo(str(dst))


if __name__ == "__main__":
    app()
