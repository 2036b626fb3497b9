"""The ``mindscope`` command: one sub-command group per capability; thin, no logic."""
from __future__ import annotations

import importlib
import logging

import typer

from ._protocols import RootGroup
from ._core import register as _register_core
from ._core import register_demo as _register_demo

app = typer.Typer(name="mindscope", no_args_is_help=True, add_completion=False, cls=RootGroup,
                  # plain click help (rich's help renderer costs ~0.25 s of imports) and our
                  # own one-line errors instead of typer's pretty tracebacks
                  rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Look inside language models and change what they do from the inside. "
                       "Options follow one vocabulary: see docs/cli.md.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug",
                                     help="Show the full traceback on errors (anywhere on the "
                                          "line; or set MINDSCOPE_DEBUG=1).")):
    """Look inside language models and change what they do from the inside."""

_register_core(app)
_register_demo(app)

# (module, attribute, command name, help): each capability's own CLI file.
_GROUPS = [
    ("sae", "app", "sae", "Sparse autoencoders: train, eval, sweep, plan, convert."),
    ("evals", "eval_cmd", "eval", "HLE-format benchmark runs; steered vs baseline side by side."),
    ("evals", "app", "evals", "Grade saved responses; evaluation utilities."),
    ("steering", "vector_app", "vector", "Steering vectors: extract, inspect."),
    ("steering", "steer_app", "steer", "Steer generation with vectors; strength x layer sweeps."),
    ("activations", "harvest_cmd", "harvest", "Harvest activations to an on-disk store."),
    ("activations", "corpus_app", "corpus", "Build and inspect corpora (default corpus needs no download)."),
    ("causal", "lens_app", "lens", "Logit lens and tuned lens."),
    ("causal", "patch_app", "patch", "Activation/attribution patching and direct logit attribution."),
    ("features", "app", "features", "Describe SAE latents: analyze, explain, score, search."),
    ("features", "serve", "serve", "Serve the feature browser on 127.0.0.1."),
    ("features", "export_app", "export", "Export a feature analysis: html or neuronpedia."),
    ("audit", "organism_app", "organism", "Hidden-objective model organism: build, eval."),
    ("audit", "audit_app", "audit", "Auditor's toolkit, audit log and the auditing game."),
    ("protocols", "protocols_cmd", "protocols", "List the registered protocols and their settings."),
    ("protocols", "controls_cmd", "controls",
     "Run every positive control (documented settings, resumable); verdicts and minutes."),
    ("circuits", "app", "circuits",
     "Circuit tracing: transcoders for every layer, attribution graphs, the graph browser."),
    # `mindscope NAME` and `mindscope run NAME` for every registered protocol, options from its
    # Config: built on use by _protocols (RootGroup / run_app), no line here
    ("_protocols", "run_app", "run", "Run a registered protocol; options from its Config."),
]


def _mount() -> None:
    for mod, attr, name, help_ in _GROUPS:
        sub = getattr(importlib.import_module(f"mindscope.cli.{mod}"), attr)
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=name, help=help_)
        else:  # a plain function: one command
            app.command(name=name, help=help_)(sub)


_mount()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
