"""``mindscope features ...`` (analyze, explain, score, search), plus the top-level commands
``serve DIR`` (``serve``) and ``export html|neuronpedia DIR`` (``export_app``). Thin: the logic
is in ``mindscope.features`` and ``mindscope.report``."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

import typer

from ._common import load_model, pick_sae, print_table, sae_folder
from .activations import parse_count as _count

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Describe SAE latents: statistics, explanations, scores, search.")
export_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Export a feature analysis: static HTML or Neuronpedia JSON.")
log = logging.getLogger(__name__)


def _load_lm(model: Optional[str], quiet: bool = False):
    return load_model(model, quiet=quiet)


def _sae(path):
    from mindscope.sae import SAE

    try:
        return SAE.load(sae_folder(str(path)))
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="--sae") from None


def _fs(spec):
    """A FeatureSet from ``--sae`` (SAE folder, its features/ folder or a registered name):
    'no such folder' when it does not exist, 'holds no feature analysis' when it is not one."""
    from mindscope.features import FeatureSet

    path = sae_folder(str(spec))
    try:
        return FeatureSet(path)
    except FileNotFoundError as e:
        raise typer.BadParameter(f"{e}; run `mindscope features analyze --sae {spec} --store "
                                 "STORE` first", param_hint="--sae") from None


def _latents(spec: Optional[str]) -> Optional[list]:
    if not spec:
        return None
    out = []
    for part in spec.split(","):
        if ":" in part:
            a, b = part.split(":")
            out += list(range(int(a), int(b)))
        elif part.strip():
            out.append(int(part))
    return out


@app.command("analyze")
def analyze_cmd(
    sae_spec: str = typer.Option(..., "--sae", help="SAE folder (cfg.json + sae.safetensors) or registered name; "
                             "tables go to SAE/features/"),
    store: Optional[Path] = typer.Option(None, "--store", help="activation store of the SAE's "
                                         "site (no model run: the cheap path)"),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="corpus to run the model on "
                                         "instead ('default' = the bundled corpus)"),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="tokens to analyse (e.g. 100k, "
                                         "2M); default: the whole store / 100k of a corpus"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model for token strings and "
                                        "logit effects (default: the SAE's model)"),
    append: bool = typer.Option(False, "--append", help="add the store's not-yet-analysed "
                                "shards to an existing analysis"),
    top_k: int = typer.Option(16, "--top-k", min=1, help="top examples per latent"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default SAE/features)"),
    map_method: str = typer.Option("auto", "--map", help="auto | umap | pca"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """One streaming pass: top-k and quantile examples, density, histograms, logit effects,
    decoder neighbours and a 2-D map, as Parquet beside the SAE."""
    from mindscope.features import AnalysisConfig, analyze, analyze_corpus

    if (store is None) == (corpus is None):
        raise typer.BadParameter("give exactly one of --store or --corpus")
    n = _count(tokens) if tokens else None
    if store is not None and not store.is_dir():
        raise typer.BadParameter(f"{store}: no such folder; harvest one first (mindscope harvest)",
                                 param_hint="--store")
    sae = sae_folder(sae_spec)
    s = _sae(sae)
    lm = _load_lm(model or s.cfg.model or None, quiet)
    try:
        cfg = AnalysisConfig(top_k=top_k, map_method=map_method)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if store is not None:
        fs = analyze(s, store, lm=lm, out=out or sae / "features", cfg=cfg, append=append,
                     max_tokens=n)
    else:
        fs = analyze_corpus(s, lm, corpus=corpus, n_tokens=n or 100_000,
                            out=out or sae / "features", cfg=cfg, append=append)
    i = fs.info
    typer.echo(f"analysed {i['n_rows']} tokens ({i.get('pass_tokens_per_s', 0):.0f} tok/s) -> "
               f"{fs.path}")


@app.command("explain")
def explain_cmd(
    sae_opt: Optional[str] = typer.Option(None, "--sae", help="SAE folder (with features/), its features/ folder, or a registered name"),
    dir: Optional[Path] = typer.Argument(None, hidden=True),
    judge: str = typer.Option("offline", "--judge", help="offline | lm | http://host:port/v1"),
    judge_model: str = typer.Option("default", "--judge-model", help="model name on the server"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="local model for --judge lm"),
    latents: Optional[str] = typer.Option(None, "--latents", help="e.g. 0:100,512 (default all "
                                          "that fired)"),
    workers: int = typer.Option(4, "--workers", min=1, help="parallel requests (HTTP judges)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Write a short explanation of each latent from its top and quantile examples."""
    from mindscope.features import explain

    dir = pick_sae(sae_opt, dir)
    fs = _fs(dir)
    lm = _load_lm(model, quiet) if judge == "lm" else None
    rows = explain(fs, judge=judge, latents=_latents(latents), workers=workers, lm=lm,
                   model=judge_model)
    bad = sum(r["error"] is not None for r in rows)
    typer.echo(f"explained {len(rows) - bad} latents ({bad} failed) -> {fs.path / 'explanations.parquet'}")


@app.command("score")
def score_cmd(
    sae_opt: Optional[str] = typer.Option(None, "--sae", help="SAE folder (with features/), its features/ folder, or a registered name"),
    dir: Optional[Path] = typer.Argument(None, hidden=True),
    judge: str = typer.Option("offline", "--judge", help="offline | lm | http://host:port/v1"),
    judge_model: str = typer.Option("default", "--judge-model"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="local model for --judge lm"),
    scorers: str = typer.Option("detection,fuzzing,specificity", "--scorers"),
    latents: Optional[str] = typer.Option(None, "--latents"),
    workers: int = typer.Option(4, "--workers", min=1),
    as_json: bool = typer.Option(False, "--json", help="print JSON lines instead of a table"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Score explanations: detection, fuzzing (accuracy/F1/AUC with stderr), specificity 0-3."""
    from mindscope.features import score

    dir = pick_sae(sae_opt, dir)
    fs = _fs(dir)
    lm = _load_lm(model, quiet) if judge == "lm" else None
    try:
        score(fs, judge=judge, latents=_latents(latents), workers=workers, lm=lm,
              scorers=[s.strip() for s in scorers.split(",") if s.strip()], model=judge_model)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e)) from None
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
            for r in fs.query("select scorer, judge, count(*) n, avg(accuracy) acc, avg(f1) f1, "
                              "avg(auc) auc, avg(mean_rating) rating from scores group by "
                              "scorer, judge order by scorer")]
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r))
    else:
        print_table(rows, title=f"scores of {fs.path / 'scores.parquet'}")


@app.command("search")
def search_cmd(
    sae_opt: Optional[str] = typer.Option(None, "--sae", help="SAE folder (with features/), its features/ folder, or a registered name"),
    dir: Optional[Path] = typer.Argument(None, hidden=True),
    text: Optional[str] = typer.Option(None, "--text", help="features active on each token "
                                       "(runs the model)"),
    explanation: Optional[str] = typer.Option(None, "--explanation", help="features whose "
                                              "explanation matches"),
    token: Optional[str] = typer.Option(None, "--token", help="features a token most activates"),
    top: int = typer.Option(5, "--top", min=1, help="results (per token for --text)"),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Search features by text, by explanation, or by token."""
    from mindscope import features as F

    dir = pick_sae(sae_opt, dir)
    fs = _fs(dir)
    if sum(x is not None for x in (text, explanation, token)) != 1:
        raise typer.BadParameter("give exactly one of --text, --explanation, --token")
    if explanation is not None:
        for r in F.search_explanations(fs, explanation, top):
            typer.echo(f"#{r['latent']}\t{r['explanation']}")
    elif token is not None:
        tok = _load_lm(model or fs.info.get("model"), quiet).tokenizer if not token.isdigit() else None
        for r in F.features_for_token(fs, token, tok, top):
            typer.echo(f"#{r['latent']}\tsum {r['sum']:.3g}\tmean {r['mean']:.3g}\tn {r['count']}")
    else:
        sae_dir = fs.path.parent
        lm = _load_lm(model or fs.info.get("model"), quiet)
        for r in F.features_for_text(lm, _sae(sae_dir), text, top):
            feats = " ".join(f"#{a}({v:.2f})" for a, v in r["features"])
            typer.echo(f"{r['pos']}\t{r['token_str']!r}\t{feats}")


def serve(
    sae_opt: Optional[str] = typer.Option(None, "--sae", help="SAE folder (with features/), its features/ folder, or a registered name"),
    dir: Optional[Path] = typer.Argument(None, hidden=True),
    host: str = typer.Option("127.0.0.1", "--host", help="interface; anything but 127.0.0.1 "
                             "exposes the browser to the network (a warning is printed)"),
    port: int = typer.Option(8765, "--port"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model for the text and steering "
                                        "pages (loaded on first use)"),
):
    """Serve the feature browser (feature list, feature pages, text and steering pages)."""
    from mindscope.report import FeatureServer

    logging.getLogger("mindscope").setLevel(logging.INFO)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: serving on {host} makes the browser reachable from other "
                    "machines (no authentication)", fg="yellow", err=True)
    dir = str(sae_folder(pick_sae(sae_opt, dir)))
    try:
        srv = FeatureServer(dir, host, port, load_lm=(lambda: _load_lm(model)) if model else None)
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e)) from None
    typer.echo(f"feature browser: {srv.url}  (Ctrl-C to stop)")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


@export_app.command("html")
def export_html_cmd(
    sae_opt: Optional[str] = typer.Option(None, "--sae", help="SAE folder (with features/), its features/ folder, or a registered name"),
    dir: Optional[Path] = typer.Argument(None, hidden=True),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    latents: Optional[str] = typer.Option(None, "--latents", help="default: every latent that fired"),
):
    """Static HTML browser (no text/steering pages: they need the live model)."""
    from mindscope.report import export_html

    dir = str(sae_folder(pick_sae(sae_opt, dir)))
    _fs(dir)
    typer.echo(str(export_html(dir, out, _latents(latents))))


@export_app.command("neuronpedia")
def export_np_cmd(
    sae_opt: Optional[str] = typer.Option(None, "--sae", help="SAE folder (with features/), its features/ folder, or a registered name"),
    dir: Optional[Path] = typer.Argument(None, hidden=True),
    out: Path = typer.Option(..., "--out", "-o", help="output folder for batch-<k>.json"),
    model_id: str = typer.Option("", "--model-id", help="Neuronpedia model id"),
    sae_set: str = typer.Option("", "--sae-set", help="Neuronpedia source set id"),
    layer: Optional[int] = typer.Option(None, "--layer"),
    batch_size: int = typer.Option(128, "--batch-size", min=1),
):
    """Neuronpedia feature/activation JSON (SAEDashboard batch layout) for upload."""
    from mindscope.report import export_neuronpedia

    dir = str(sae_folder(pick_sae(sae_opt, dir)))
    _fs(dir)
    paths = export_neuronpedia(dir, out, model_id, layer, sae_set, batch_size)
    typer.echo(f"{len(paths)} batch files -> {out}")


def main(argv: Optional[List[str]] = None) -> None:  # pragma: no cover - python -m entry
    app(argv)
