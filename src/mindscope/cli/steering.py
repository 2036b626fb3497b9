"""``mindscope vector ...`` (extract, info, export-gguf) and ``mindscope steer ...`` (generate
steered text; ``steer sweep`` for a strength x layer grid). Thin: the logic is in
``mindscope.steering``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
vector_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Extract, inspect and export steering / concept vectors.")
steer_app = typer.Typer(add_completion=False, invoke_without_command=True,
                        help="Generate with a vector added at a site; `steer sweep` for a grid.")
METHODS = ("concept", "caa", "pca")


def _load_lm(model: str, dtype: str = "float32"):
    import mindscope as ms

    try:
        return ms.load(model, dtype=dtype)
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="--model") from None


def _lines(path: Optional[Path], what: str) -> list[str]:
    if path is None:
        raise typer.BadParameter(f"{what} is required for this method")
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist", param_hint=what)
    if path.suffix == ".jsonl":
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return [r["text"] if isinstance(r, dict) else str(r) for r in rows]
    return [x.replace("\\n", "\n") for x in path.read_text().splitlines() if x.strip()]


def _load_vec(path: Path):
    from mindscope.steering import load_vector

    try:
        return load_vector(path)
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="--vector") from None


@vector_app.command("extract")
def extract(
    out: Path = typer.Option(..., "--out", "-o", help="output .safetensors (a .json sidecar is "
                             "written next to it)"),
    method: str = typer.Option("concept", "--method", help=f"one of {', '.join(METHODS)}"),
    site: str = typer.Option("resid_post.15", "--site", help="site or pattern "
                             "(resid_post.15, resid_post.10:20) -- many sites give a VectorSet"),
    word: List[str] = typer.Option([], "--word", "-w", help="concept word(s) (method concept)"),
    positive: Optional[Path] = typer.Option(None, "--positive", help="prompts, one per line "
                                            "(or .jsonl with 'text') (caa, pca)"),
    negative: Optional[Path] = typer.Option(None, "--negative", help="contrast prompts (caa, pca)"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="baseline words, one per "
                                            "line (concept; default: 100 built-in nouns)"),
    positions: str = typer.Option("last", "--positions", help="last | all | prompt (caa, pca)"),
    chat: bool = typer.Option(False, "--chat/--no-chat", help="chat-template the prompts (caa, pca)"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
):
    """Extract a vector (or a set) and save it as safetensors + JSON sidecar."""
    import mindscope.steering as st

    if method not in METHODS:
        raise typer.BadParameter(f"unknown method {method!r}; use one of {METHODS}")
    lm = _load_lm(model)
    try:
        lm.expand_sites(site)
        if method == "concept":
            if not word:
                raise typer.BadParameter("--word is required for --method concept")
            base = _lines(baseline, "--baseline") if baseline else None
            v = (st.concept_vector(lm, word[0], site, base) if len(word) == 1
                 else st.concept_vectors(lm, word, site, base))
        else:
            pos, neg = _lines(positive, "--positive"), _lines(negative, "--negative")
            fn = st.mean_difference if method == "caa" else st.pca_direction
            v = fn(lm, pos, neg, site, positions=positions, chat=chat)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    path = v.save(out)
    console.print(f"wrote {path} (+ {path.with_suffix('.json').name}): {v!r}")


@vector_app.command("info")
def info(file: Path = typer.Argument(..., help="vector .safetensors (with its .json sidecar)"),
         as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Show a vector file's metadata, norms and (for sets) geometry."""
    from mindscope.steering import VectorSet

    v = _load_vec(file)
    d = {"kind": type(v).__name__, "shape": list(v.data.shape), "dtype": str(v.data.dtype),
         "site": v.site, "model": v.model, "method": v.method, "data_hash": v.data_hash,
         "normalisation": v.normalisation, "layer_convention": v.layer_convention, "meta": v.meta}
    if isinstance(v, VectorSet):
        d["names"], d["sites"] = v.names, v.sites
        d["norms"] = [round(float(x), 4) for x in v.norms()]
        if len(v) > 1:
            cm = v.cosine_matrix()
            off = cm[~_eye(len(v))]
            d["cosine_offdiag_mean"] = round(float(off.mean()), 4)
            d["pca_explained_variance_ratio"] = [round(float(x), 4) for x in
                                                 v.pca(min(len(v), 5)).explained_variance_ratio]
    else:
        d["norm"] = round(float(v.norm), 4)
    if as_json:
        console.print_json(json.dumps(d, default=str))
        return
    t = Table("field", "value", title=str(file))
    for k, val in d.items():
        t.add_row(k, json.dumps(val, default=str) if not isinstance(val, str) else val)
    console.print(t)


def _eye(n):
    import torch

    return torch.eye(n, dtype=torch.bool)


@vector_app.command("export-gguf")
def export_gguf(file: Path = typer.Argument(..., help="vector .safetensors"),
                out: Path = typer.Option(..., "--out", "-o", help="output .gguf"),
                scale: float = typer.Option(1.0, "--scale", help="baked into the tensors"),
                site: Optional[str] = typer.Option(None, "--site", help="override the site(s); "
                                                   "a pattern repeats the vector per layer"),
                model_hint: str = typer.Option("llama", "--model-hint",
                                               help="llama.cpp architecture name")):
    """Export to llama.cpp's control-vector GGUF (direction.N = resid_post.N)."""
    from mindscope.steering import export_control_vector

    v = _load_vec(file)
    try:
        if site:
            import re

            m = re.match(r"^(\w+)\.(\d+):(\d+)$", site)
            names = ([f"{m[1]}.{i}" for i in range(int(m[2]), int(m[3]))] if m else site.split(","))
            data = v.data if v.data.dim() == 1 else v.data.mean(0)
            v = {s: data for s in names}
        path = export_control_vector(v, out, model_hint=model_hint, scale=scale)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    console.print(f"wrote {path}")


@steer_app.callback()
def steer(
    ctx: typer.Context,
    vector: Optional[Path] = typer.Option(None, "--vector", "-v", help="vector .safetensors"),
    site: Optional[str] = typer.Option(None, "--site", help="site or pattern (default: the "
                                       "vector's own)"),
    scale: float = typer.Option(4.0, "--scale", "-s", help="strength"),
    relative: bool = typer.Option(False, "--relative", help="scale = fraction of the mean "
                                  "residual norm at the site"),
    prompt: List[str] = typer.Option([], "--prompt", "-p", help="prompt (repeatable)"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", "-n", min=1),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0),
    compare: bool = typer.Option(True, "--compare/--no-compare", help="also show unsteered"),
):
    """Generate with ``--vector`` added at ``--site`` (h + scale * v)."""
    if ctx.invoked_subcommand is not None:
        return
    if vector is None or not prompt:
        raise typer.BadParameter("give --vector FILE and at least one --prompt (or use "
                                 "`mindscope steer sweep`)")
    import mindscope.steering as st

    v = _load_vec(vector)
    lm = _load_lm(model)
    try:
        ivs = st.steer(lm, v, sites=site, scale=scale, relative=relative)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    outs = lm.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                       interventions=ivs)
    base = lm.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature) \
        if compare else None
    for i, (p, o) in enumerate(zip(prompt, outs)):
        console.rule(f"prompt {i}: {p[:60]}")
        if base is not None:
            console.print("[bold]unsteered:[/bold] " + base[i].text)
        console.print(f"[bold]steered ({site or v.site} x {scale:g}):[/bold] " + o.text)


@steer_app.command("sweep")
def sweep_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="output folder (parquet, json, png, md)"),
    concept: Optional[str] = typer.Option(None, "--concept", help="extract this word's concept "
                                          "vector at each layer and score its mentions"),
    vector: Optional[Path] = typer.Option(None, "--vector", "-v", help="or: a vector file "
                                          "(one site per row for a set)"),
    word: Optional[str] = typer.Option(None, "--word", help="word to score (default: --concept "
                                       "or the vector's meta word)"),
    layers: str = typer.Option("6,10,15,20", "--layers", help="comma-separated block indices"),
    strengths: str = typer.Option("0,1,2,4,8", "--strengths", help="comma-separated"),
    relative: bool = typer.Option(False, "--relative", help="strengths as fractions of the "
                                  "residual norm"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="prompts file (one per line)"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    random_baseline: bool = typer.Option(True, "--random/--no-random"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
):
    """Strength x layer grid in one batched generate call: mention rate + perplexity, with a
    random-direction baseline of matched norm."""
    import mindscope.steering as st

    if (concept is None) == (vector is None):
        raise typer.BadParameter("give exactly one of --concept WORD or --vector FILE")
    lm = _load_lm(model)
    try:
        layer_ids = [int(x) for x in layers.split(",") if x.strip()]
        strs = [float(x) for x in strengths.split(",") if x.strip()]
        sites = [f"resid_post.{i}" for i in layer_ids]
        if concept:
            vs = st.concept_vector(lm, concept, sites)
        else:
            v = _load_vec(vector)
            if isinstance(v, st.VectorSet) and len(set(v.sites)) == len(v):
                vs = v
            else:
                data = v.data if v.data.dim() == 1 else v.data.mean(0)
                vs = {s: data for s in sites}
        target = word or concept or (v.meta.get("word") if vector else None)
        if not target:
            raise typer.BadParameter("give --word (the concept whose mentions are scored)")
        cfg = st.SweepConfig(strengths=strs, concept=target, relative=relative,
                             random_baseline=random_baseline, max_new_tokens=max_new_tokens,
                             batch_size=batch_size,
                             **({"prompts": _lines(prompts, "--prompts")} if prompts else {}))
        res = st.strength_sweep(lm, vs, cfg)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    res.save(out)
    console.print(res.markdown())
    console.print(f"wrote {out}/ (trials.parquet, table.parquet, results.json, sweep.png)")
