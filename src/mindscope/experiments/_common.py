"""Shared scaffolding for experiment runs: the run folder, binomial CIs, and a small
self-contained HTML report with embedded PNG plots.

A run folder holds ``run_config.json`` (every setting, library versions, git hash, model and
data hashes), ``results.json`` (metrics with CIs) and ``report.html``. Writes are atomic.

>>> wilson(3, 10)["lo"] < 0.3 < wilson(3, 10)["hi"]
True
>>> r = Report("Demo")
>>> r.text("hello"); r.table([{"a": 1, "b": 0.5}])
>>> "<table" in r.html()
True
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import logging
import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..core._files import atomic_write_bytes
from ..core._lock import RunLock

log = logging.getLogger(__name__)

__all__ = ["wilson", "mean_ci", "mcnemar", "seed_spread", "weights_note", "write_text", "write_json", "model_hash", "git_hash", "versions", "RunDir", "Report",
           "figure_png", "heatmap_png", "to_jsonable", "choose", "one_of", "at_least_one",
           "shipped_json", "save_html", "save_png"]
DATA = Path(__file__).resolve().parent.parent / "data"


# ---- config checks -------------------------------------------------------------------------

def choose(value, allowed: Sequence[str], noun: str, allow_empty: bool = True) -> tuple:
    """A config field naming parts/protocols: a str or a sequence -> a validated tuple.

    >>> choose("gap", ("gap", "verbal"), "protocol")
    ('gap',)
    """
    picked = tuple([value] if isinstance(value, str) else value)
    bad = [p for p in picked if p not in allowed]
    if bad or (not picked and not allow_empty):
        raise ValueError(f"unknown {noun}(s) {bad}; choose from {tuple(allowed)}")
    return picked


def one_of(name: str, value, allowed: Sequence) -> None:
    """Raise ValueError unless config field ``name`` holds one of ``allowed``.

    >>> one_of("role_filter", "x", ("rule", "none"))
    Traceback (most recent call last):
    ValueError: role_filter must be 'rule' or 'none'; got 'x'
    """
    if value not in allowed:
        opts = [repr(a) for a in allowed]
        opts = ", ".join(opts[:-1]) + " or " + opts[-1] if len(opts) > 1 else opts[0]
        raise ValueError(f"{name} must be {opts}; got {value!r}")


def at_least_one(cfg, names: Sequence[str]) -> None:
    """Raise ValueError naming the first field of ``names`` on ``cfg`` that is below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1; got {getattr(cfg, name)}")


# ---- statistics ----------------------------------------------------------------------------

def wilson(k: int, n: int, z: float = 1.96) -> dict:
    """Rate k/n with its Wilson score interval (95% for z=1.96). n == 0 -> rate None.

    Wilson (1927): centre (p + z²/2n)/(1 + z²/n), half-width z/(1 + z²/n)·√(p(1-p)/n + z²/4n²).
    """
    k, n = int(k), int(n)
    if k < 0 or n < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n; got k={k}, n={n}")
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "lo": None, "hi": None}
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return {"k": k, "n": n, "rate": p, "lo": max(0.0, centre - half), "hi": min(1.0, centre + half)}


def mean_ci(xs: Sequence[float], z: float = 1.96) -> dict:
    """Mean with a normal-approximation CI (mean ± z·sd/√n; sd with n-1)."""
    xs = [float(x) for x in xs]
    n = len(xs)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    h = z * sd / math.sqrt(n)
    return {"mean": m, "lo": m - h, "hi": m + h, "n": n}


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test for paired binary outcomes (same trials under two conditions):
    discordant counts b01 (a false, b true) and b10, two-sided binomial p on min(b01, b10).

    >>> mcnemar([True, True, True, False], [False, False, False, False])["p"]
    0.25
    """
    a, b = [bool(x) for x in a], [bool(x) for x in b]
    if len(a) != len(b):
        raise ValueError(f"mcnemar needs paired outcomes of equal length; got {len(a)} and {len(b)}")
    n10 = sum(x and not y for x, y in zip(a, b))
    n01 = sum(y and not x for x, y in zip(a, b))
    n = n10 + n01
    k = min(n10, n01)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"n_pairs": len(a), "a_only": n10, "b_only": n01, "p": p}


def seed_spread(values: Sequence[float]) -> dict:
    """Across-seed summary of one number: mean, sd (n-1), min, max, the values, and a t-based
    95% interval of the mean (normal quantile for n > 30).

    >>> seed_spread([1.0, 2.0, 3.0])["sd"]
    1.0
    """
    xs = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    n = len(xs)
    if n == 0:
        return {"n_seeds": 0, "mean": None, "sd": None, "min": None, "max": None, "values": [],
                "lo": None, "hi": None}
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306,
         10: 2.262}.get(n, 1.96 if n > 30 else 2.2)
    h = t * sd / math.sqrt(n) if n > 1 else None
    return {"n_seeds": n, "mean": m, "sd": sd, "min": min(xs), "max": max(xs), "values": xs,
            "lo": None if h is None else m - h, "hi": None if h is None else m + h}


# ---- files ---------------------------------------------------------------------------------

def to_jsonable(x: Any) -> Any:
    """Dataclasses, tensors, tuples, paths and floats (nan -> None) made JSON-ready."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: to_jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return to_jsonable(x.tolist())
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return repr(x)


def write_json(path, obj: Any) -> Path:
    """Atomic JSON write (temp file + os.replace)."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=1) + "\n").encode())
    return path


def write_text(path, text: str) -> Path:
    """Atomic text write (UTF-8)."""
    path = Path(path)
    atomic_write_bytes(path, text.encode())
    return path


def save_html(path, report: "Report") -> Path:
    """Atomic write of ``report`` as one HTML file; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, report.html().encode())
    return path


def save_png(path, data: bytes) -> str:
    """Atomic write of PNG bytes; returns the path as a string (what ``Result.plots`` keeps)."""
    atomic_write_bytes(Path(path), data)
    return str(path)


def shipped_json(folder: str, name: str) -> Any:
    """A JSON file shipped with the package (``mindscope/data/<folder>/<name>``)."""
    path = DATA / folder / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"shipped file {path} is missing; reinstall mindscope") from None


# ---- provenance ----------------------------------------------------------------------------

def git_hash(path=None) -> Optional[str]:
    """HEAD commit of the repository holding ``path`` (default: this package), or None."""
    where = Path(path or __file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import transformers

    try:
        from importlib.metadata import version
        ms_version = version("mindscope")
    except Exception:  # not installed as a distribution
        ms_version = None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "mindscope": ms_version,
            "platform": platform.platform()}


def model_hash(lm, sample: int = 4096) -> str:
    """A cheap fingerprint of a model: sha256 over its config and, per parameter, its name,
    shape, dtype and ``sample`` evenly strided values (not every weight: fast on big models)."""
    h = hashlib.sha256()
    cfg = getattr(lm.model, "config", None)
    h.update((cfg.to_json_string(use_diff=False) if cfg is not None else "").encode())
    for name, p in lm.model.named_parameters():
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // sample)
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(flat[::step][:sample].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def weights_note(lm) -> Optional[str]:
    """How the model's weights were made, when it matters for the numbers: the bundled SmolLM2
    is a Q4_1 GGUF dequantized to float (not the original bf16 checkpoint)."""
    from ..core import ALIASES

    name = getattr(lm, "name", "") or ""
    if name in ALIASES:
        return ALIASES[name].note
    if str(name).lower().endswith(".gguf") or "q4" in str(name).lower():
        return f"{name}: weights from a quantized GGUF, dequantized to float"
    return None


def _seeds(settings: Any) -> Optional[list]:
    d = to_jsonable(settings)
    if not isinstance(d, dict):
        return None
    if d.get("seeds") is not None:
        return list(d["seeds"])
    return [d["seed"]] if d.get("seed") is not None else None


class RunDir:
    """A run folder. ``RunDir(out, settings, lm)`` writes ``run_config.json`` at once;
    ``save_results`` and ``save_report`` write the rest atomically."""

    def __init__(self, path, settings: Any, lm=None, data_hash: Optional[str] = None,
                 experiment: str = ""):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.path, f"experiment {experiment}".strip()).acquire()
        """Held while this object lives: another process writing here gets RunLockedError."""
        self.started = time.time()
        self.config = {"experiment": experiment, "settings": to_jsonable(settings),
                       "versions": versions(), "git": git_hash(),
                       "model": None if lm is None else {"name": lm.name, "family": lm.family,
                                                         "n_layers": lm.n_layers,
                                                         "d_model": lm.d_model,
                                                         "dtype": str(lm.dtype),
                                                         "hash": model_hash(lm),
                                                         "weights": weights_note(lm)},
                       "seeds": _seeds(settings),
                       "data_hash": data_hash,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(self.path / "run_config.json", self.config)

    def elapsed(self) -> float:
        return time.time() - self.started

    def save_results(self, results: dict) -> Path:
        return write_json(self.path / "results.json", results)

    def save_report(self, report: "Report", name: str = "report.html") -> Path:
        return save_html(self.path / name, report)


# ---- plots and HTML ------------------------------------------------------------------------

def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def heatmap_png(values, rows: Sequence, cols: Sequence, title: str, row_label: str = "",
                col_label: str = "", fmt: str = "{:.2f}", vmin=None, vmax=None,
                cmap: str = "viridis") -> bytes:
    """A labelled heatmap of ``values`` (len(rows), len(cols)); None/nan cells stay blank."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    a = np.array([[np.nan if v is None else float(v) for v in r] for r in values], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * max(1, len(cols)), 1.0 + 0.5 * max(1, len(rows))))
    im = ax.imshow(a, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title, fontsize=10)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            if not np.isnan(a[i, j]):
                ax.text(j, i, fmt.format(a[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if im.norm(a[i, j]) < 0.5 else "black")
    fig.colorbar(im, ax=ax)
    return figure_png(fig)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict) and "rate" in v:  # a wilson() dict
        return "–" if v["rate"] is None else f"{v['rate']:.2f} [{v['lo']:.2f}, {v['hi']:.2f}]"
    if isinstance(v, dict) and "mean" in v:  # a mean_ci() dict
        return "–" if v["mean"] is None else f"{v['mean']:.3g} [{v['lo']:.3g}, {v['hi']:.3g}]"
    return html.escape("" if v is None else str(v))


class Report:
    """A one-file HTML report: headings, paragraphs, tables, PNGs (base64) and transcripts."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def h(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, rows: Sequence[dict], columns: Optional[Sequence[str]] = None) -> None:
        if not rows:
            self.text("(no rows)")
            return
        cols = list(columns or rows[0].keys())
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>"
                       for r in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def image(self, png: bytes, alt: str = "") -> None:
        b64 = base64.b64encode(png).decode()
        self.parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">')

    def transcript(self, label: str, prompt: str, response: str) -> None:
        self.parts.append(f"<details><summary>{html.escape(label)}</summary><pre>"
                          f"{html.escape(prompt)}</pre><pre class=r>{html.escape(response)}"
                          "</pre></details>")

    def html(self) -> str:
        css = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
               "padding:3px 8px;font-size:13px}pre{white-space:pre-wrap;background:#f6f6f6;"
               "padding:6px}pre.r{background:#eef6ee}img{max-width:100%}")
        return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(self.title)}"
                f"</title><style>{css}</style></head><body><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self.parts) + "</body></html>")
