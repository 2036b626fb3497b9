"""The one self-contained HTML page builder (no templates, no web framework, no external files)
and the figure helpers every report uses.

Everything user-supplied is escaped; images are embedded as base64 data URIs, so one
``page.render()`` string is one complete, portable file.

>>> p = Page("Demo", subtitle="a & b")
>>> _ = p.section("Numbers", table([{"x": 1, "y": 0.5}, {"x": 2, "y": None}]))
>>> _ = p.section("Tokens", tokens(["The", " ocean", "!"], [0.0, 2.0, 0.5]))
>>> html = p.render(); "<table" in html and "a &amp; b" in html
True
>>> r = Page("Run").h("Rates").table([{"a": {"rate": 0.5, "lo": 0.1, "hi": 0.9}}])
>>> "0.50 [0.10, 0.90]" in r.html()
True
"""
from __future__ import annotations

import base64
import html as _html
import io
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from ..core import atomic_write, atomic_write_text

__all__ = ["Page", "table", "png", "tokens", "esc", "fmt", "link", "bars_svg", "CSS",
           "figure_png", "heatmap_png", "save_figure"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1100px;
 padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;border-bottom:1px solid #ddd;margin-top:1.6em}
.sub{color:#666;margin-top:0} table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4;cursor:pointer} td.num{text-align:right;font-variant-numeric:tabular-nums}
.tok{white-space:pre-wrap;border-radius:2px} .ex{font-family:ui-monospace,monospace;font-size:.85em;
 margin:.25em 0;padding:.3em;border:1px solid #eee;background:#fcfcfc}
.ctr{outline:1px solid #c33} .note{color:#666;font-size:.9em} nav a{margin-right:1em}
form input,form textarea{font:inherit} .warn{color:#a40}
pre{white-space:pre-wrap;background:#f6f6f6;padding:6px} pre.r{background:#eef6ee} img{max-width:100%}
"""


def esc(x: Any) -> str:
    """HTML-escape anything (None -> empty string)."""
    return "" if x is None else _html.escape(str(x), quote=True)


def fmt(x: Any, digits: int = 4) -> str:
    """Compact display of numbers (general format), lists, None, and interval dicts (a
    ``wilson`` rate as ``0.50 [0.10, 0.90]``, a ``mean_ci`` mean with its bounds); escaped."""
    if x is None:
        return ""
    if isinstance(x, dict) and "rate" in x and "lo" in x:  # a wilson() dict
        return "–" if x["rate"] is None else f"{x['rate']:.2f} [{x['lo']:.2f}, {x['hi']:.2f}]"
    if isinstance(x, dict) and "mean" in x and "lo" in x:  # a mean_ci() dict
        return ("–" if x["mean"] is None else
                f"{x['mean']:.{digits}g} [{x['lo']:.{digits}g}, {x['hi']:.{digits}g}]")
    if isinstance(x, float):
        return "nan" if math.isnan(x) else esc(f"{x:.{digits}g}")
    if isinstance(x, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in x)
    return esc(x)


def link(href: str, text: Any, **attrs: str) -> str:
    extra = "".join(f' {k}="{esc(v)}"' for k, v in attrs.items())
    return f'<a href="{esc(href)}"{extra}>{esc(text)}</a>'


def table(rows: Sequence[dict], columns: Optional[Sequence[str]] = None, *,
          raw: Iterable[str] = (), formats: Optional[dict] = None, attrs: str = "",
          digits: int = 4) -> str:
    """A table from a list of dicts. ``columns`` picks/orders keys (default: the first row's);
    cells in ``raw`` columns are inserted as HTML (already safe); ``formats`` maps a column to
    a function value -> str (escaped unless the column is raw); numbers show ``digits``
    significant digits."""
    if not rows:
        return '<p class="note">(none)</p>'
    cols = list(columns or rows[0].keys())
    raw, formats = set(raw), formats or {}
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c in formats:
                v = formats[c](v)
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            s = v if c in raw else fmt(v, digits)
            cells.append(f'<td class="num">{s}</td>' if num else f"<td>{s}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def png(img: Union[bytes, str, Path, Any], alt: str = "", width: Optional[int] = None) -> str:
    """An <img> with the PNG embedded as base64: bytes, a file path, or a matplotlib figure."""
    if hasattr(img, "savefig"):
        buf = io.BytesIO()
        img.savefig(buf, format="png", bbox_inches="tight", dpi=110)
        data = buf.getvalue()
    elif isinstance(img, (str, Path)):
        data = Path(img).read_bytes()
    else:
        data = bytes(img)
    w = f' width="{int(width)}"' if width else ""
    return f'<img alt="{esc(alt)}"{w} src="data:image/png;base64,{base64.b64encode(data).decode()}">'


_TOKEN_HTML: dict = {}  # token string -> its escaped display form (tokens repeat: a vocabulary)


def _token_html(t: Any) -> str:
    s = _TOKEN_HTML.get(t) if isinstance(t, str) else None
    if s is None:
        s = esc(str(t).replace("\n", "↵"))
        if isinstance(t, str) and len(_TOKEN_HTML) < 262_144:
            _TOKEN_HTML[t] = s
    return s


def tokens(strs: Sequence[str], acts: Sequence[float], max_act: Optional[float] = None,
           center: Optional[int] = None, color: str = "255,140,0") -> str:
    """Tokens with a background whose opacity is act / max_act; the activation in a tooltip;
    the ``center`` token outlined. Newlines are shown as the visible symbol ↵.

    (The hot loop of a static feature export: thousands of pages of ~30 examples each, so the
    escaped token text is cached and the opacity clamp is inlined.)"""
    mx = max_act if max_act else max([a for a in acts if a is not None] + [1e-9])
    pos, cache = mx > 0, _TOKEN_HTML
    out = []
    for i, (t, a) in enumerate(zip(strs, acts)):
        txt = cache.get(t) if t.__class__ is str else None
        a = float(a or 0.0)
        if pos:
            r = a / mx  # clamped to [0, 1] as max(0, min(1, r)): NaN -> 1
            alpha = r if 0.0 <= r <= 1.0 else (0.0 if r < 0.0 else 1.0)
        else:
            alpha = 0.0
        cls = "tok ctr" if center is not None and i == center else "tok"
        out.append(f'<span class="{cls}" title="{a:.3g}" style="background:rgba({color},'
                   f'{alpha:.2f})">{txt or _token_html(t)}</span>')
    return '<div class="ex">' + "".join(out) + "</div>"


def bars_svg(values: Sequence[float], labels: Optional[Sequence[str]] = None, width: int = 420,
             height: int = 120, color: str = "#e8890c") -> str:
    """A minimal inline SVG bar chart (e.g. a histogram); labels become tooltips."""
    n = max(len(values), 1)
    mx = max(list(values) + [1e-12])
    bw = width / n
    parts = []
    for i, v in enumerate(values):
        h = (height - 2) * v / mx
        tip = f"<title>{esc(labels[i] if labels else '')}: {fmt(v)}</title>"
        parts.append(f'<rect x="{i * bw:.1f}" y="{height - h:.1f}" width="{max(bw - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="{color}">{tip}</rect>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img">{"".join(parts)}</svg>')


class Page:
    """``Page(title).section(name, html...).render()`` -> a complete HTML document."""

    def __init__(self, title: str, subtitle: Optional[str] = None, nav: str = "",
                 head: str = ""):
        self.title, self.subtitle, self.nav, self.head = title, subtitle, nav, head
        self.parts: list[str] = []

    def add(self, *html: str) -> "Page":
        """Append raw (already safe) HTML."""
        self.parts.extend(html)
        return self

    def text(self, s: str, cls: str = "") -> "Page":
        """Append an escaped paragraph."""
        c = f' class="{esc(cls)}"' if cls else ""
        return self.add(f"<p{c}>{esc(s)}</p>")

    def section(self, title: str, *html: str, id: Optional[str] = None) -> "Page":
        i = f' id="{esc(id)}"' if id else ""
        return self.add(f"<section{i}><h2>{esc(title)}</h2>{''.join(html)}</section>")

    def h(self, text: str, level: int = 2) -> "Page":
        """Append an escaped heading."""
        return self.add(f"<h{level}>{esc(text)}</h{level}>")

    def table(self, rows: Sequence[dict], columns: Optional[Sequence[str]] = None,
              digits: int = 3) -> "Page":
        """Append ``table(rows, columns)`` (numbers to ``digits`` significant digits)."""
        return self.add(table(rows, columns, digits=digits))

    def image(self, img: Union[bytes, str, Path, Any], alt: str = "") -> "Page":
        """Append an embedded PNG (bytes, a file path or a matplotlib figure)."""
        return self.add(png(img, alt))

    def transcript(self, label: str, prompt: str, response: str) -> "Page":
        """Append a collapsed prompt / response pair."""
        return self.add(f"<details><summary>{esc(label)}</summary><pre>{esc(prompt)}</pre>"
                        f"<pre class=r>{esc(response)}</pre></details>")

    def render(self) -> str:
        sub = f'<p class="sub">{esc(self.subtitle)}</p>' if self.subtitle else ""
        nav = f"<nav>{self.nav}</nav>" if self.nav else ""
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width,initial-scale=1">'
                f"<title>{esc(self.title)}</title><style>{CSS}</style>{self.head}</head><body>"
                f"{nav}<h1>{esc(self.title)}</h1>{sub}{''.join(self.parts)}</body></html>")

    html = render

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically (``core.atomic_write_text``); creates the parent folder."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, self.render())


# ---- figures -------------------------------------------------------------------------------

def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def save_figure(path: Union[str, Path], fig, dpi: int = 110) -> Path:
    """Write a matplotlib figure as a PNG file atomically (``core.atomic_write``; the parent
    folder is created) and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)


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
