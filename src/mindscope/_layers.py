"""The layer order of mindscope's packages, bottom to top: the one place it is written down
(``tests/test_architecture.py`` enforces it; docs/architecture.md shows it).

A module may import its own package, any package on its own layer or a lower one, and the
public face (``__init__``) of those packages: never a package above it, never another package's
private ``_x`` module."""
from __future__ import annotations

LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),                                   # models, sites, interventions, file writers
    ("runs", "judges"),                          # shared services: run folders, stats, pages; judges
    ("activations",),                            # corpus -> windows -> harvest -> store
    ("sae",),                                    # architectures, trainer, metrics, formats
    ("features", "steering", "probes", "causal", "circuits", "testing"),  # analysis and control
    ("evals",),                                  # benchmark runs, graders, calibration
    ("audit",),                                  # hidden-objective organism and auditing game
    ("experiments",),                            # one package per protocol, @protocol registry
    ("report",),                                 # feature browser, exports
    ("demo",),                                   # the resumable study
    ("cli",),                                    # the `mindscope` command
)

LEVEL: dict[str, int] = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
"""package -> its layer index (0 = core)."""
