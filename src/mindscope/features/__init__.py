"""mindscope.features: describe SAE latents - statistics from one streaming pass, automated
explanations and scores, search, and the tables the feature browser shows.

>>> # from mindscope.features import analyze, FeatureSet, explain, score
>>> # fs = analyze("runs/sae", "acts/l15", lm=lm)           # tables in runs/sae/features/
>>> # fs.query("select latent, density from features order by density desc limit 5")
>>> # explain(fs, judge="offline"); score(fs, judge="offline")
"""
from ._analyze import (AnalysisConfig, analyze, analyze_corpus, decoder_map, decoder_neighbours,
                       encode, features_dir, finalize, logit_effects, run_pass)
from ._state import HIST_EDGES, N_HIST, N_RES, FeatureState, hash_key, hist_bin, hist_edges
from ._interpret import (SCORERS, binary_metrics, decisions, explain, highlight,
                         offline_explanation, parse_explanation, parse_list, roc_auc, score)
from ._delphi import (contrastive_explanation, embedding_scores, intervention_scores,
                      intruder_scores, search_latents)
from ..judges import FeatureJudge, OfflineJudge, make_feature_judge  # re-exported
from ._search import features_for_text, features_for_token, search_explanations
from ._tables import FeatureSet

__all__ = ["embedding_scores", "intruder_scores", "contrastive_explanation", "search_latents", "intervention_scores", "AnalysisConfig", "analyze", "analyze_corpus", "finalize", "run_pass", "encode",
           "features_dir", "logit_effects", "decoder_neighbours", "decoder_map", "FeatureState",
           "hash_key", "hist_bin", "hist_edges", "HIST_EDGES", "N_HIST", "N_RES", "FeatureSet",
           "explain", "score", "decisions", "SCORERS", "binary_metrics", "roc_auc", "highlight", "parse_list",
           "parse_explanation", "offline_explanation", "FeatureJudge", "OfflineJudge",
           "make_feature_judge", "features_for_text", "features_for_token", "search_explanations"]
