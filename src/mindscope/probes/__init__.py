"""mindscope.probes: linear probes on activations, split by document, cross-validated, swept over
layers, checked against control tasks, and exported as direction files.

>>> import numpy as np
>>> from mindscope.probes import evaluate_probe
>>> rng = np.random.default_rng(0); X = rng.normal(size=(300, 8)); y = (X[:, 0] > 0).astype(int)
>>> e = evaluate_probe(X, y, groups=np.arange(300) // 10, kind="logistic")
>>> e.test_score > 0.9
True
"""
from ._control import control_task, selectivity, shuffled_labels
from ._erase import Eraser, eigen_bands, fit_leace, orth_eraser
from ._export import load_probe, probe_to_vectors, save_probe, vectors_to_probe
from ._geometry import (max_cosine, orthonormal_basis, principal_angles, random_basis,
                        random_overlap, subspace_overlap)
from ._linear import (KINDS, CVResult, LinearProbe, ProbeEval, RegSweep, cross_validate,
                      evaluate_probe, fit_probe, group_folds, group_split, majority_rate,
                      sweep_regularization)
from ._multislot import MultiSlotProbe, fit_multislot
from ._sweep import LayerSweep, control_labels, layer_sweep

__all__ = ["LinearProbe", "KINDS", "fit_probe", "evaluate_probe", "ProbeEval", "group_split",
           "group_folds", "cross_validate", "CVResult", "sweep_regularization", "RegSweep",
           "majority_rate", "control_task", "shuffled_labels", "selectivity", "control_labels",
           "layer_sweep", "LayerSweep", "MultiSlotProbe", "fit_multislot", "orthonormal_basis",
           "principal_angles", "subspace_overlap", "random_overlap", "max_cosine", "random_basis",
           "probe_to_vectors", "vectors_to_probe", "save_probe", "load_probe", "Eraser",
           "fit_leace", "orth_eraser", "eigen_bands"]
