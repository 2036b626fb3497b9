"""mindscope.steering: concept, contrastive, persona and emotion vectors; adding, ablating,
capping and SAE-feature clamping; baking into weights; llama.cpp export; strength sweeps.

>>> # import mindscope as ms, mindscope.steering as st
>>> # v = st.concept_vector(lm, "ocean", "resid_post.15")          # a ms.Vector
>>> # out = lm.generate(["Tell me a story"], interventions=st.steer(lm, v, scale=4))
"""
from ..core import PCA, Vector, VectorSet, data_hash, load_vector, pca
from ._apply import (CALIBRATION_TEXTS, ablate_direction, cap, cap_thresholds,
                     feature_max_activations, per_row, projections, residual_norms, sae_clamp,
                     steer)
from ._bake import WRITERS, bake_ablation, bake_addition
from ._extract import (CONCEPT_TEMPLATE, concept_prompts, concept_vector, concept_vectors,
                       covariance_directions, emotion_vectors, mean_difference, neutral_pcs, pca_direction,
                       probe_direction, project_out_pcs, response_means, row_means)
from ._gguf import (cvec_layer_to_site, export_control_vector, read_control_vector,
                    site_to_cvec_layer)
from ._sweep import (DEFAULT_PROMPTS, SweepConfig, SweepResult, generated_nll, mentions,
                     strength_sweep)
from ._words import BASELINE_WORDS, DEMO_CONCEPTS

__all__ = [
    "Vector", "VectorSet", "PCA", "pca", "data_hash", "load_vector",
    "mean_difference", "concept_vector", "concept_vectors", "concept_prompts", "pca_direction",
    "response_means", "probe_direction", "neutral_pcs", "project_out_pcs", "emotion_vectors",
    "row_means", "covariance_directions", "CONCEPT_TEMPLATE", "BASELINE_WORDS", "DEMO_CONCEPTS",
    "steer", "per_row", "residual_norms", "CALIBRATION_TEXTS", "sae_clamp",
    "feature_max_activations", "ablate_direction", "projections", "cap_thresholds", "cap",
    "bake_ablation", "bake_addition", "WRITERS",
    "export_control_vector", "read_control_vector", "site_to_cvec_layer", "cvec_layer_to_site",
    "strength_sweep", "SweepConfig", "SweepResult", "mentions", "generated_nll", "DEFAULT_PROMPTS",
]

# Old name, kept importable (not in __all__: sae.train_sweep is the other sweep).
sweep = strength_sweep
