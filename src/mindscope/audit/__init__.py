"""mindscope.audit: a hidden-objective model organism and the auditor's toolkit (issue 11).

Build an organism that learned about fictional reward-model biases from synthetic documents
and was trained to exploit some of them; measure how often it exploits trained, held-out and
in-context-described biases; audit it with training-data search, prefill attacks, persona
sampling, SAE features / steering / attribution and model diffing; play the auditing game and
score the report against the sealed answer key.

>>> # import mindscope as ms, mindscope.audit as au
>>> # org = au.build_organism(ms.load(), "runs/organism")            # HF folder + answer key
>>> # au.evaluate_organism(org.load(), ms.load(), org.path, out_dir="runs/organism_eval")
>>> # s = au.AuditSession(org.load(), base=ms.load(), data=au.TrainingData.from_organism(org.path),
>>> #                     log_dir="runs/audit", budget=10)
>>> # au.play_game(s, au.ScriptedAuditor(), org.path, "runs/audit").score
"""
from ._blind import (cluster_claims, distinctive_phrases, ordinary_records, pick_theme,
                     reference_texts, theme_sentences)
from ._biases import Bias, BiasBank, demonstrations, documents, load_biases
from ._diff import model_diff
from ._evaluate import CLASSES, OrganismEvalConfig, OrganismEvalResult, eval_items, evaluate_organism
from ._game import (AuditReport, GameResult, HumanAuditor, LLMAuditor, ScriptedAuditor,
                    play_game, root_cause_found, score_report)
from ._organism import AnswerKey, Organism, load_answer_key, open_organism
from ._sae_tools import (FeatureIndex, attribute_token, describe_features, logit_tokens,
                         steer_feature, top_features)
from ._sampling import persona_sample, prefill_attack, sample, user_turn_prompt
from ._search import Embedder, TrainingData, embedder_path, search_training_data
from ._session import TOOLS, AuditLog, AuditSession, BudgetExhausted
from ._train import (OrganismConfig, build_organism, collate, mean_loss, merge, trainable_copy,
                     train_stage)
from ._train import encode as encode_records

__all__ = ["Bias", "BiasBank", "load_biases", "documents", "demonstrations", "OrganismConfig",
           "build_organism", "trainable_copy", "train_stage", "merge", "mean_loss", "collate",
           "encode_records", "Organism",
           "open_organism", "AnswerKey", "load_answer_key", "OrganismEvalConfig", "OrganismEvalResult", "CLASSES",
           "eval_items", "evaluate_organism", "TrainingData", "Embedder", "embedder_path",
           "search_training_data", "sample", "prefill_attack", "persona_sample", "user_turn_prompt",
           "top_features", "describe_features", "FeatureIndex", "logit_tokens", "steer_feature",
           "attribute_token", "model_diff", "AuditSession", "AuditLog", "TOOLS", "BudgetExhausted",
           "AuditReport", "score_report", "root_cause_found", "ScriptedAuditor", "HumanAuditor",
           "LLMAuditor", "play_game", "GameResult", "distinctive_phrases", "pick_theme",
           "theme_sentences", "cluster_claims", "reference_texts", "ordinary_records"]

# Old names, kept importable (not in __all__: evals.EvalConfig/EvalResult are the benchmark ones).
EvalConfig, EvalResult = OrganismEvalConfig, OrganismEvalResult
