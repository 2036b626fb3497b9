"""``mindscope lens`` (logit / tuned lens) and ``mindscope patch`` (activation patching,
attribution patching, direct logit attribution). Thin: all logic is in ``mindscope.causal``."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ._common import console as _console, load_model, need_path, renamed

console = _console()
lens_app = typer.Typer(no_args_is_help=True, add_completion=False,
                       help="Logit lens and tuned lens: what each layer would predict.")
patch_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Activation / attribution patching and direct logit attribution.")

MODEL = typer.Option("smollm2-135m-instruct", "--model", "-m",
                     help="alias, folder, .gguf or cached hub id")


def _load(model: str, dtype: str = "float32"):
    return load_model(model, dtype=dtype)


def _space_notes(lm, *tokens) -> None:
    """One line on stderr per token the model would more likely write with a leading space."""
    from mindscope.causal import space_hint

    for t in tokens:
        note = space_hint(lm, t) if t is not None else None
        if note:
            typer.echo(f"note: {note}", err=True)
    # said once here; the library's own warning (for Python users) would repeat it
    logging.getLogger("mindscope.causal._common").setLevel(logging.ERROR)


def _bad(e: Exception, hint: Optional[str] = None):
    raise typer.BadParameter(str(e), param_hint=hint) from None


@lens_app.command("run")
def lens_run(
    prompt: str = typer.Option(..., "--prompt", "-p", help="the text to read"),
    target: Optional[str] = typer.Option(None, "--target",
                                         help="single-token string to track, usually with its "
                                              "leading space (' Paris'); default: the model's "
                                              "final top-1"),
    target_old: Optional[str] = typer.Option(None, "-t", hidden=True),
    position: int = typer.Option(-1, "--position", help="token position (negative from the end)"),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1),
    tuned: Optional[Path] = typer.Option(None, "--tuned", help="tuned-lens folder (lens train)"),
    chat: bool = typer.Option(False, "--chat/--no-chat", help="render with the chat template"),
    model: str = MODEL,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
):
    """Top tokens and the target's rank/probability after every layer at one position."""
    import mindscope.causal as mc

    target = renamed(target_old, target, "-t", "--target")
    need_path(tuned, "--tuned", "folder")
    lm = _load(model)
    _space_notes(lm, target)
    try:
        lens = mc.TunedLens.load(tuned, lm) if tuned else None
        res = mc.logit_lens(lm, [prompt], target=target, positions="all", k=top_k, lens=lens,
                            chat=chat)
    except (FileNotFoundError, ValueError) as e:
        _bad(e)
    n = res.pos.numel()
    if not -n <= position < n:
        _bad(ValueError(f"position {position} is outside the prompt's {n} tokens"), "--position")
    rows = res.table(lm.tokenizer, position)
    if as_json:
        console.print_json(json.dumps({"token": res.tokens[position], "layers": rows}))
        return
    t = Table("layer", "top tokens", f"rank of {rows[0]['target']!r}", "p(target)", "KL to final",
              title=f"{'tuned' if tuned else 'logit'} lens at token {res.tokens[position]!r}")
    for r in rows:
        t.add_row(str(r["layer"]), " ".join(repr(x) for x in r["top"]), str(r["target_rank"]),
                  f"{r['target_prob']:.3f}", f"{r['kl_to_final']:.3f}")
    console.print(t)


@lens_app.command("train")
def lens_train(
    corpus: Path = typer.Option(..., "--corpus", help="text file, one document per line"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for tuned_lens.safetensors + .json"),
    steps: int = typer.Option(250, "--steps", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    batch_tokens: int = typer.Option(256, "--batch-tokens", min=1),
    max_length: int = typer.Option(128, "--max-length", min=2),
    model: str = MODEL,
):
    """Train a tuned lens (per-layer affine translators, KL to the final logits)."""
    import mindscope.causal as mc

    if not corpus.is_file():
        _bad(FileNotFoundError(f"corpus {corpus} does not exist"), "--corpus")
    texts = [ln for ln in corpus.read_text().splitlines() if ln.strip()]
    if not texts:
        _bad(ValueError(f"corpus {corpus} has no non-empty lines"), "--corpus")
    lm = _load(model)
    lens = mc.train_tuned_lens(lm, texts, steps=steps, lr=lr, batch_tokens=batch_tokens,
                               max_length=max_length)
    lens.save(out)
    console.print(f"tuned lens -> {out}: mean KL {lens.info['kl_before']:.4f} -> "
                  f"{lens.info['kl_after']:.4f} nats over {lens.info['tokens']} tokens")


def _pairs_opts(clean, corrupt, answer, wrong):
    if len(clean) != len(corrupt):
        _bad(ValueError(f"{len(clean)} --clean but {len(corrupt)} --corrupt prompts"), "--corrupt")
    return (answer, wrong)


@patch_app.command("run")
def patch_run(
    clean: List[str] = typer.Option(..., "--clean", help="clean prompt (repeatable)"),
    corrupt: List[str] = typer.Option(..., "--corrupt", help="corrupted prompt (one per --clean)"),
    answer: str = typer.Option(..., "--answer", "-a", help="correct answer token, e.g. ' Mary'"),
    wrong: str = typer.Option(..., "--wrong", "-w", help="wrong answer token, e.g. ' John'"),
    sites: str = typer.Option("resid_pre.*", "--sites", help="site pattern(s), comma-separated"),
    heads: bool = typer.Option(False, "--heads", help="patch attention heads instead of sites"),
    mode: str = typer.Option("denoise", "--mode", help="denoise (clean into corrupted) or noise"),
    method: str = typer.Option("exact", "--method", help="exact or attribution (gradient)"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    chat: bool = typer.Option(False, "--chat/--no-chat"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for scores, JSON and heatmap.png"),
    model: str = MODEL,
):
    """Patch sites x positions (or heads); write scores.safetensors, patch.json, heatmap.png."""
    import mindscope.causal as mc

    if method not in ("exact", "attribution"):
        _bad(ValueError(f"--method must be exact or attribution, got {method!r}"), "--method")
    if mode not in ("denoise", "noise"):
        _bad(ValueError(f"--mode must be denoise or noise, got {mode!r}"), "--mode")
    ans = _pairs_opts(clean, corrupt, answer, wrong)
    lm = _load(model)
    _space_notes(lm, answer, wrong)
    try:
        pairs = mc.prepare_pairs(lm, clean, corrupt, ans, chat)
        if method == "attribution":
            res = mc.attribution_patch(lm, clean, corrupt, ans, sites=sites, mode=mode,
                                       heads=heads, pairs=pairs)
        elif heads:
            res = mc.patch_heads(lm, clean, corrupt, ans, mode=mode, batch_size=batch_size,
                                 pairs=pairs)
        else:
            res = mc.activation_patch(lm, clean, corrupt, ans, sites=sites, mode=mode,
                                      batch_size=batch_size, pairs=pairs)
    except ValueError as e:
        _bad(e)
    res.save(out)
    res.heatmap(out / "heatmap.png")
    flat = res.scores.flatten()
    i = int(flat.abs().argmax())
    r, c = divmod(i, res.scores.shape[-1]) if res.scores.dim() == 2 else (i, 0)
    where = f"{res.rows[r]} @ {res.cols[c]!r}" if res.scores.dim() == 2 else res.rows[r]
    console.print(f"clean LD {res.clean_ld:.3f}, corrupted LD {res.corrupt_ld:.3f}; "
                  f"strongest: {where} = {float(flat[i]):.3f}; wrote {out}")


@patch_app.command("dla")
def patch_dla(
    prompt: List[str] = typer.Option(..., "--prompt", "-p", help="prompt (repeatable)"),
    answer: str = typer.Option(..., "--answer", "-a"),
    wrong: str = typer.Option(..., "--wrong", "-w"),
    top: int = typer.Option(10, "--top", min=1, help="show this many components"),
    chat: bool = typer.Option(False, "--chat/--no-chat"),
    model: str = MODEL,
    as_json: bool = typer.Option(False, "--json"),
):
    """Direct logit attribution of logit[answer] - logit[wrong] at the last token."""
    import mindscope.causal as mc

    lm = _load(model)
    _space_notes(lm, answer, wrong)
    try:
        res = mc.direct_logit_attribution(lm, prompt, (answer, wrong), chat=chat)
    except ValueError as e:
        _bad(e)
    top_items = res.top(top)
    if as_json:
        console.print_json(json.dumps({"total": float(res.total.mean()), "top": top_items}))
        return
    t = Table("component", "contribution", title=f"DLA: total {float(res.total.mean()):.3f}")
    for name, v in top_items:
        t.add_row(name, f"{v:+.3f}")
    console.print(t)
