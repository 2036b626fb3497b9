"""mindscope.causal: logit lens / tuned lens, direct logit attribution, activation patching,
attribution patching and SAE-feature attribution (see docs/attribution.md).

>>> import mindscope.causal as mc
>>> # mc.logit_lens(lm, ["The capital of France is"], target=" Paris", positions="last")
>>> # mc.direct_logit_attribution(lm, prompts, answers=(" Mary", " John"))
>>> # mc.activation_patch(lm, clean, corrupt, (" Mary", " John"), sites="resid_pre.*")
"""
from ._attribution import SAEAttribution, attribution_patch, sae_attribution
from ._common import FrozenNorm, answer_ids, freeze_final_norm, logit_diff, space_hint, token_id
from ._dla import DLAResult, direct_logit_attribution
from ._lens import LensResult, TunedLens, logit_lens, train_tuned_lens
from ._patching import PatchResult, activation_patch, patch_heads, prepare_pairs
from ._plot import heatmap

__all__ = ["space_hint", "logit_lens", "LensResult", "TunedLens", "train_tuned_lens",
           "direct_logit_attribution", "DLAResult", "activation_patch", "patch_heads",
           "attribution_patch", "prepare_pairs", "PatchResult", "sae_attribution",
           "SAEAttribution", "logit_diff", "token_id", "answer_ids", "freeze_final_norm",
           "FrozenNorm", "heatmap"]
