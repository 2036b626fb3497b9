"""The ``mindscope`` command: one sub-command group per capability; thin, no logic."""
from __future__ import annotations

import importlib
import logging

import typer

from ._core import register as _register_core
from ._core import register_demo as _register_demo

app = typer.Typer(name="mindscope", no_args_is_help=True, add_completion=False,
                  help="Look inside language models and change what they do from the inside.")
_register_core(app)
_register_demo(app)

# (module, attribute, command name, help): each capability's own CLI file.
_GROUPS = [
    ("sae", "app", "sae", "Sparse autoencoders: train, eval, sweep, plan, convert."),
    ("evals", "eval_cmd", "eval", "HLE-format benchmark runs; steered vs baseline side by side."),
    ("evals", "app", "evals", "Grade saved responses; evaluation utilities."),
    ("steering", "vector_app", "vector", "Steering vectors: extract, inspect."),
    ("steering", "steer_app", "steer", "Steer generation with vectors; strength x layer sweeps."),
    ("introspect", "app", "introspect",
     "Introspection experiments: injected-thought detection, prefill, control, mechanisms."),
    ("binding", "app", "binding", "Probes and multi-slot entity binding experiments."),
    ("activations", "harvest_cmd", "harvest", "Harvest activations to an on-disk store."),
    ("activations", "corpus_app", "corpus", "Build and inspect corpora (default corpus needs no download)."),
    ("causal", "lens_app", "lens", "Logit lens and tuned lens."),
    ("causal", "patch_app", "patch", "Activation/attribution patching and direct logit attribution."),
    ("onpolicy", "app", "onpolicy", "On-policy recognition: entropy gap, input surprise, intention, verbal report."),
    ("features", "app", "features", "Describe SAE latents: analyze, explain, score, search."),
    ("features", "serve", "serve", "Serve the feature browser on 127.0.0.1."),
    ("features", "export_app", "export", "Export a feature analysis: html or neuronpedia."),
    ("emotions", "app", "emotions", "Emotion concepts: vectors, geometry, intensity, tracking, steering."),
    ("persona", "app", "persona", "Persona space, the Assistant axis, drift and activation capping."),
    ("audit", "organism_app", "organism", "Hidden-objective model organism: build, eval."),
    ("audit", "audit_app", "audit", "Auditor's toolkit, audit log and the auditing game."),
    ("protocols", "protocols_cmd", "protocols", "List the registered protocols and their settings."),
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
