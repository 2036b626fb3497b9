"""CLI for circuit tracing: ``mindscope circuits harvest|train|metrics|graph|export|serve``.

Thin: parses options and calls ``mindscope.circuits`` (and ``mindscope.report`` for serve)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from .activations import parse_count

app = typer.Typer(help="Circuit tracing: transcoders for every layer, attribution graphs, the "
                       "graph browser.", no_args_is_help=True)


def _fail(e: Exception):
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(2)


def _lm(model: str):
    import mindscope as ms

    return ms.load(model)


def _positive(name: str, v) -> None:
    if v is not None and v <= 0:
        raise typer.BadParameter(f"{name} must be > 0, got {v}")


@app.command("harvest")
def harvest_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Store folder (resumes a partial harvest)."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model alias or folder."),
    tokens: str = typer.Option("200k", "--tokens", help="Tokens to run, e.g. 200k."),
    corpus: str = typer.Option("default", "--corpus", help="Corpus folder or 'default'."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="Storage dtype: float32, bfloat16, float16."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Store every layer's MLP input and output (mlp_in.*, mlp_out.*) in one forward pass each."""
    from mindscope.circuits import harvest_mlp

    n = parse_count(tokens)
    _positive("--tokens", n)
    try:
        s = harvest_mlp(_lm(model), out, n_tokens=n, corpus=corpus, store_dtype=dtype,
                        progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(f"{s.n_tokens} rows x {len(s.sites)} sites in {out}")


@app.command("train")
def train_cmd(
    store: Path = typer.Option(..., "--store", help="Store with mlp_in.* and mlp_out.* (circuits harvest)."),
    out: Path = typer.Option(..., "--out", "-o", help="Transcoder folder (resumes from its checkpoint)."),
    kind: str = typer.Option("plt", "--kind", help="plt (per-layer) or clt (cross-layer)."),
    activation: str = typer.Option("jumprelu", "--activation", help="topk, jumprelu or relu."),
    latents: int = typer.Option(1024, "--latents", help="Latents per layer."),
    k: int = typer.Option(32, "--k", help="topk: active latents per layer and token."),
    skip: bool = typer.Option(False, "--skip", help="Add a linear skip term per layer."),
    layers: str = typer.Option("all", "--layers", help="Layers to cover: 'all' (graphs need all)."),
    steps: int = typer.Option(400, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Token rows per step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam lr (default by activation/width)."),
    sparsity: float = typer.Option(1e-3, "--sparsity", help="jumprelu L0 / relu L1 coefficient."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="Steps between checkpoints."),
    seed: int = typer.Option(0, "--seed", help="Init and data-order seed."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, or bfloat16 (mixed precision: "
                              "bf16 matmuls, fp32 weights; ~5x faster on CPUs with AMX)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train transcoders for every layer at once (a killed run resumes when started again)."""
    from mindscope.activations import ActivationStore
    from mindscope.circuits import TrainSettings, TranscoderConfig, train_transcoders

    for name, v in (("--latents", latents), ("--k", k), ("--steps", steps),
                    ("--batch-size", batch_size), ("--checkpoint-every", checkpoint_every), ("--lr", lr)):
        _positive(name, v)
    if layers != "all":
        raise typer.BadParameter("--layers: only 'all' is supported (attribution graphs need "
                                 "every layer)")
    try:
        s = ActivationStore.open(store)
        n_layers = len([x for x in s.sites if x.startswith("mlp_in.")])
        if n_layers == 0:
            raise typer.BadParameter(f"--store {store} holds no mlp_in.* sites; make it with "
                                     "`mindscope circuits harvest`")
        cfg = TranscoderConfig(n_layers, s.d_model, latents, k=k, kind=kind,
                               activation=activation, skip=skip)
        st = TrainSettings(steps=steps, batch_size=batch_size, lr=lr, sparsity_coef=sparsity,
                           checkpoint_every=checkpoint_every, seed=seed, dtype=dtype)
        train_transcoders(s, out, cfg, st, progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(f"transcoders: {out}")


@app.command("metrics")
def metrics_cmd(
    tc: Path = typer.Option(..., "--transcoders", help="Transcoder folder."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    store: Optional[Path] = typer.Option(None, "--store", help="Store for held-out FVU per layer."),
    texts: Path = typer.Option(..., "--texts", help="Text file: one evaluation text per line."),
):
    """FVU of mlp_out per layer, CE with every MLP spliced at once, replacement scores."""
    from mindscope.activations import ActivationStore
    from mindscope.circuits import Transcoders, transcoder_metrics

    try:
        lines = [t for t in texts.read_text().splitlines() if t.strip()]
        m = transcoder_metrics(_lm(model), Transcoders.load(tc), lines,
                               store=ActivationStore.open(store) if store else None)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(json.dumps(m, indent=1))


@app.command("graph")
def graph_cmd(
    prompt: str = typer.Argument(..., help="The prompt whose next token is explained."),
    tc: Path = typer.Option(..., "--transcoders", help="Transcoder folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Graph folder (graph files + <slug>.json)."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    node_threshold: float = typer.Option(0.8, "--node-threshold", help="Cumulative influence kept (nodes)."),
    edge_threshold: float = typer.Option(0.98, "--edge-threshold", help="Cumulative influence kept (edges)."),
    max_features: int = typer.Option(4096, "--max-features", help="At most this many feature nodes."),
    batch_size: int = typer.Option(64, "--batch-size", help="Targets per backward sweep."),
    max_memory: float = typer.Option(6.0, "--max-memory", help="GiB the graph's tensors may "
                                     "take beyond the weights (estimated first); longer prompts "
                                     "are refused."),
    slug: str = typer.Option("graph", "--slug", help="Name of the graph JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Attribution graph of PROMPT: graph files, pruned graph JSON (circuit-tracer schema), scores."""
    from mindscope.circuits import GraphConfig, Transcoders, attribute, graph_json, prune, save_graph

    for name, v in (("--max-features", max_features), ("--batch-size", batch_size),
                    ("--max-memory", max_memory)):
        _positive(name, v)
    for name, v in (("--node-threshold", node_threshold), ("--edge-threshold", edge_threshold)):
        if not 0 <= v <= 1:
            raise typer.BadParameter(f"{name} must be in [0, 1], got {v}")
    try:
        lm = _lm(model)
        g = attribute(lm, Transcoders.load(tc), prompt,
                      GraphConfig(batch_size=batch_size, max_feature_nodes=max_features,
                                  max_memory_gb=max_memory), progress=not quiet)
        save_graph(g, out)
        d = graph_json(g, prune(g, node_threshold, edge_threshold), slug=slug,
                       node_threshold=node_threshold, edge_threshold=edge_threshold)
        from mindscope.core import atomic_write_json
        atomic_write_json(out / f"{slug}.json", d)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    s = d["metadata"]["info"]["scores"]
    typer.echo(f"{len(d['nodes'])} nodes, {len(d['links'])} links; replacement "
               f"{s['replacement']:.3f}, completeness {s['completeness']:.3f}; "
               f"{g.stats['seconds']:.1f} s -> {out / (slug + '.json')}")


@app.command("export")
def export_cmd(
    tc: Path = typer.Option(..., "--transcoders", help="Transcoder folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder in circuit-tracer's layout."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
):
    """Write transcoders as circuit-tracer's config.yaml + layer_{i}.safetensors (relu/jumprelu)."""
    from mindscope.circuits import Transcoders, export_circuit_tracer

    try:
        typer.echo(str(export_circuit_tracer(Transcoders.load(tc), _lm(model), out)))
    except (ValueError, FileNotFoundError) as e:
        _fail(e)


@app.command("serve")
def serve_cmd(
    graph: Path = typer.Argument(..., help="Graph folder written by `circuits graph`."),
    tc: Optional[Path] = typer.Option(None, "--transcoders", help="Transcoder folder (for interventions)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model for interventions (loaded on first use)."),
    port: int = typer.Option(8766, "--port"),
):
    """Serve the graph page on 127.0.0.1: nodes by layer and position, hover, pin, group, intervene."""
    from mindscope.report import GraphServer

    logging.getLogger("mindscope").setLevel(logging.INFO)
    try:
        srv = GraphServer(graph, port=port, transcoders=tc, load_lm=(lambda: _lm(model)) if model else None)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(f"graph browser: {srv.url}  (Ctrl-C to stop)")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
