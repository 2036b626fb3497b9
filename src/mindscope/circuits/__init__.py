"""mindscope.circuits: transcoders for every layer (per-layer, skip, cross-layer), trained from
the activation store; attribution graphs over the local replacement model; their pruning,
scores, interventions and exports (circuit-tracer / Neuronpedia graph JSON, circuit-tracer
transcoder folders).

>>> # from mindscope.circuits import harvest_mlp, train_transcoders, TranscoderConfig, TrainSettings
>>> # harvest_mlp(lm, "acts/mlp", n_tokens=200_000)
>>> # tc = train_transcoders("acts/mlp", "tc", TranscoderConfig(lm.n_layers, lm.d_model, 1024),
>>> #                        TrainSettings(steps=400))
"""
from ._splice import (check_transcoders, mlp_module, splice, spliced_loss, store_metrics,
                      transcoder_metrics)
from ._train import TrainSettings, check_store, harvest_mlp, mlp_sites, train_transcoders
from ._transcoders import ACTIVATIONS, TRANSCODER_KINDS, TranscoderConfig, Transcoders

__all__ = ["Transcoders", "TranscoderConfig", "TRANSCODER_KINDS", "ACTIVATIONS", "TrainSettings",
           "train_transcoders", "harvest_mlp", "mlp_sites", "check_store", "splice",
           "spliced_loss", "store_metrics", "transcoder_metrics", "check_transcoders", "mlp_module"]
from ._graph import Graph, GraphConfig, attribute, influence  # noqa: E402
from ._linear import LinearModel, capture  # noqa: E402
from ._memory import TensorPeak, memory_estimate  # noqa: E402
from ._prune import Pruned, graph_scores, prune, total_effects  # noqa: E402

__all__ += ["Graph", "GraphConfig", "attribute", "influence", "LinearModel", "capture",
            "memory_estimate", "TensorPeak", "Pruned", "prune", "graph_scores", "total_effects"]
from ._export import (check_interventions, graph_json, intervene, load_graph,  # noqa: E402
                      pearson_ci, save_graph)
from ._graph import prepare_ids  # noqa: E402

__all__ += ["check_interventions", "graph_json", "intervene", "load_graph", "pearson_ci",
            "save_graph", "prepare_ids"]
from ._tracer import export_circuit_tracer  # noqa: E402

__all__ += ["export_circuit_tracer"]
