"""Heatmaps (matplotlib, PNG) for patching and attribution results."""
from __future__ import annotations

from pathlib import Path
from ..runs import save_figure
from typing import Optional, Sequence

import torch


def heatmap(scores: torch.Tensor, rows: Sequence[str], cols: Sequence[str], path,
            title: Optional[str] = None, center: float = 0.0, cbar: str = "normalised LD") -> Path:
    """Write a diverging heatmap of ``scores`` (R, C) centred at ``center`` to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s = scores.detach().float().cpu().numpy()
    R, C = s.shape
    lim = max(abs(float(s.max()) - center), abs(float(s.min()) - center), 1e-9)
    fig, ax = plt.subplots(figsize=(min(2 + 0.45 * C, 16), min(1.5 + 0.28 * R, 14)))
    im = ax.imshow(s, cmap="RdBu_r", vmin=center - lim, vmax=center + lim, aspect="auto")
    ax.set_xticks(range(C))
    ax.set_xticklabels([repr(c)[1:-1] for c in cols], rotation=60, ha="right", fontsize=8)
    step = max(1, R // 30)
    ax.set_yticks(range(0, R, step))
    ax.set_yticklabels(list(rows)[::step], fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=cbar)
    fig.tight_layout()
    return save_figure(path, fig)
