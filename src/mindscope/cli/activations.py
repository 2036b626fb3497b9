"""CLI for the activations layer: ``mindscope harvest`` and ``mindscope corpus build|info``.

Thin: parses options and calls ``mindscope.activations``. Under ``torchrun`` (WORLD_SIZE > 1)
``harvest`` joins the process group (``mindscope.core.init_distributed``: nccl on GPUs, gloo
on CPU), each rank tokenizes its share of the documents and harvests its shards. Also runnable alone: ``python -m mindscope.cli.activations harvest ...``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from ._common import check_sites, load_model, need_path, renamed

app = typer.Typer(help="Corpora and activation harvesting.", no_args_is_help=True)
corpus_app = typer.Typer(help="Build and inspect corpora (the default one needs no download).",
                         no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


def parse_count(text: str, option: Optional[str] = None) -> int:
    """'2M' -> 2_000_000, '500k' -> 500_000, '1.5M', '12345'; > 0 (else a usage error)."""
    t = text.strip().lower().replace("_", "").replace(",", "")
    mult = {"k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "b": 10 ** 9}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if mult > 1 else t) * mult)
    except (ValueError, OverflowError):
        raise typer.BadParameter(f"{text!r} is not a count; use e.g. 2M, 500k or 100000",
                                 param_hint=option) from None
    if n <= 0:
        raise typer.BadParameter(f"{text!r}: a count must be > 0 (e.g. 2M, 500k or 100000)",
                                 param_hint=option)
    return n


def _logging(quiet: bool) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")


@app.command("harvest")
def harvest_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Store folder (resumes if it holds a partial harvest)."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Alias, model folder or .gguf."),
    sites: str = typer.Option("resid_post.15", "--sites", help="Comma-separated sites or patterns."),
    sites_old: Optional[str] = typer.Option(None, "-s", hidden=True),
    tokens: str = typer.Option("2M", "--tokens", help="Tokens to run through the model (2M, 500k, ...)."),
    tokens_old: Optional[str] = typer.Option(None, "-n", hidden=True),
    corpus: str = typer.Option("default", "--corpus", "-c", help="'default', or a file/folder (.txt .md .jsonl .parquet, save_to_disk folders)."),
    text_field: str = typer.Option("text", help="Record field with plain text."),
    messages_field: str = typer.Option("messages", help="Record field with a chat message list."),
    on_error: str = typer.Option("skip", help="Bad records: 'skip' (logged, counted) or 'raise'."),
    window: int = typer.Option(128, min=2, help="Tokens per window."),
    bos: str = typer.Option("window", help="'window', 'document' or 'none' (see docs/activations.md)."),
    skip_positions: int = typer.Option(2, min=0, help="Do not store rows at positions < this (0 keeps all; 0 and 1 hold outlier norms)."),
    skip_tokens: str = typer.Option("special", help="Do not store rows of: 'none', 'bos' or 'special' tokens."),
    batch_size: int = typer.Option(0, min=0, help="Windows per forward (0: pick automatically)."),
    shard_tokens: int = typer.Option(32768, min=1, help="Tokens per shard (unit of writing and resuming)."),
    dtype: str = typer.Option("float32", help="Compute dtype: float32 or bfloat16."),
    store_dtype: Optional[str] = typer.Option(None, help="On-disk dtype (default: the compute dtype)."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Harvest activations of MODEL at SITES over TOKENS of a corpus into OUT."""

    from mindscope.activations import harvest, open_corpus

    sites = renamed(sites_old, sites, "-s", "--sites")
    tokens = renamed(tokens_old, tokens, "-n", "--tokens")
    n_tokens = parse_count(tokens, "--tokens")  # numbers, sites and the corpus path before the model loads
    if n_tokens < window:
        raise typer.BadParameter(f"{n_tokens} tokens is less than one window ({window}); give "
                                 "more --tokens or a smaller --window", param_hint="--tokens")
    check_sites(sites, model)
    if corpus != "default":
        need_path(Path(corpus), "--corpus", "any", "give a file, a folder, or 'default'")
    _logging(quiet)
    import datetime

    from mindscope.core import init_distributed, shutdown_distributed

    # Ranks wait for each other only at the end; allow for uneven progress on long harvests.
    # On an error the process group ends at exit (atexit), and the CLI prints the error.
    rank, _, dev = init_distributed(device, timeout=datetime.timedelta(hours=24))
    lm = load_model(model, dtype=dtype, device=str(dev), quiet=quiet)
    lm.expand_sites(sites)  # fail on a bad site before any corpus work
    src = open_corpus(corpus, text_field=text_field, messages_field=messages_field,
                      on_error=on_error)
    store = harvest(lm, out, sites=sites, corpus=src, n_tokens=n_tokens,
                    window=window, bos=bos, skip_positions=skip_positions,
                    skip_tokens=skip_tokens, batch_size=batch_size or None,
                    shard_tokens=shard_tokens, store_dtype=store_dtype, progress=not quiet)
    shutdown_distributed()          # success: every rank waits, then the group is destroyed
    if rank == 0:
        m = store.manifest
        typer.echo(f"{out}: {m['n_tokens']} rows x {m['d_model']} of {', '.join(m['sites'])} "
                   f"({m['dtype']}, {m['n_shards']} shards, "
                   f"{m['corpus']['bad_records']['count']} bad records skipped)")


@corpus_app.command("build")
def corpus_build(out: Optional[Path] = typer.Option(None, help="Folder (default: the cache)."),
                 force: bool = typer.Option(False, help="Rebuild even if it exists.")):
    """Build the default corpus (stdlib prose, code and chat; deterministic, seconds)."""
    from mindscope.activations import build_default_corpus, corpus_info

    _logging(False)
    path = build_default_corpus(out, force=force)
    info = corpus_info(path)
    typer.echo(f"{path}: {info['n_docs']} documents {info['docs']}, characters {info['chars']}")


@corpus_app.command("info")
def corpus_info_cmd(path: Optional[Path] = typer.Argument(None, help="A corpus (default: the built-in one)."),
                    model: Optional[str] = typer.Option(None, "--model", "-m", help="Count tokens with this model's tokenizer."),
                    text_field: str = typer.Option("text"), messages_field: str = typer.Option("messages"),
                    as_json: bool = typer.Option(False, "--json")):
    """Documents, make-up and (with --model) size in tokens of a corpus."""
    from mindscope.activations import Corpus, build_default_corpus, corpus_info

    tok = None
    if model:
        from transformers import AutoTokenizer

        from mindscope.core import resolve

        src, _ = resolve(model)
        tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    if path is None or (path / "info.json").exists():
        info = corpus_info(path or build_default_corpus(), tok, name=model)
    else:
        c = Corpus([path], text_field=text_field, messages_field=messages_field)
        docs = {"text": 0, "chat": 0}
        n_tok = 0
        from mindscope.activations import encode_docs

        for d in c:
            docs["chat" if d.messages else "text"] += 1
            if tok is not None:
                n_tok += len(encode_docs([d], tok)[0][0])
        info = {"path": str(path), "files": len(c.files()), "docs": docs,
                "bad_records": c.bad.to_dict(), "fingerprint": c.fingerprint()}
        if tok is not None:
            info["tokens"] = {model: n_tok}
    typer.echo(json.dumps(info, indent=1) if as_json else
               "\n".join(f"{k}: {v}" for k, v in info.items()))


if __name__ == "__main__":
    app()
