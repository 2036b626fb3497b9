"""mindscope.runs: what every run shares, directly above ``core``: the run folder
(``RunDir``, atomic JSON / HTML / PNG / text writes), provenance (``versions``, ``git_hash``,
``model_hash``, ``data_hash``, ``weights_note``: the GGUF disclosure), statistics (``wilson``,
``mean_ci``, ``t_ci``, ``bootstrap_ci``, ``mcnemar``, ``seed_spread``, ``cohen_kappa``, ``auc``),
power (``mde_proportions``, ``mde_mean``, ``mde_correlation``, ``mde_auc``, ``mde_from_curve``,
``null_statement``: what a null rules out),
and the one HTML page builder with its figure helpers (``Page``, ``table``, ``png``,
``figure_png``, ``heatmap_png``).

>>> from mindscope.runs import Page, wilson
>>> Page("t").table([{"rate": wilson(1, 2)}]).render().startswith("<!DOCTYPE html>")
True
"""
from ._page import (CSS, Page, bars_svg, esc, figure_png, fmt, heatmap_png, link, png, save_figure,
                    table, tokens)
from ._power import (mde_auc, mde_correlation, mde_from_curve, mde_mean, mde_proportions,
                     newcombe_diff, null_statement, power_proportions)
from ._provenance import data_hash, git_hash, model_hash, versions
from ._rundir import (RunDir, chat_format_of, save_html, save_png, to_jsonable, weights_note,
                      write_json, write_text)
from ._stats import (auc, bootstrap_ci, cohen_kappa, mcnemar, mean_ci, seed_spread, t_ci,
                     wilson)

__all__ = ["RunDir", "to_jsonable", "write_json", "write_text", "save_html", "save_png",
           "weights_note", "chat_format_of", "versions", "git_hash", "model_hash", "data_hash",
           "wilson", "mean_ci", "t_ci",
           "bootstrap_ci", "mcnemar", "seed_spread", "cohen_kappa", "auc", "Page", "table", "png",
           "tokens", "esc", "fmt", "link", "bars_svg", "CSS", "figure_png", "heatmap_png",
           "save_figure", "newcombe_diff", "mde_proportions", "power_proportions", "mde_mean",
           "mde_correlation", "mde_auc", "mde_from_curve", "null_statement"]
