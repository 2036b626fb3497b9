"""mindscope.sae: sparse autoencoders and transcoders (relu, topk, batchtopk, jumprelu, ...: one
file each in the registry ``mindscope.sae.archs``), their trainer, metrics, scaling-law planner
and the SAELens / sparsify formats.

>>> import torch
>>> from mindscope.sae import SAE, SAEConfig, TrainConfig, Trainer, TensorBatches, evaluate
>>> data = TensorBatches(torch.randn(1024, 16), batch_size=128, seed=0)
>>> [sae] = Trainer([(SAEConfig("topk", 16, 64, k=4), TrainConfig(steps=4))], progress=False).fit(data)
>>> 0 < evaluate(sae, [torch.randn(256, 16)])["fvu"] < 2
True
"""
from . import archs
from ._bench import BenchConfig, bench, check_sae, pareto_plot, write_bench
from ._config import ARCHS, SAEConfig, TrainConfig
from ._data import StoreBatches, TensorBatches, drop_outliers, geometric_median, heldout_batches
from ._formats import export_saelens, export_sparsify, import_saelens, import_sparsify, load_any
from ._kernels import (jumprelu, sparse_decode, sparse_decode_dense, step, topk_encode,
                       topk_encode_dense)
from ._metrics import evaluate, model_metrics, plot_density, plot_history
from ._planner import fit_power_law, flops, plan, train_sweep
from ._registry import list_saes, register, registry_dir, resolve_sae
from ._sae import SAE
from ._synth import SynthConfig, SynthData, synth_eval, synth_scores
from ..core import init_distributed, shutdown_distributed
from ._trainer import Trainer, lr_at, sparsity_at, train_device

__all__ = ["archs", "ARCHS", "SAE", "SAEConfig", "TrainConfig", "Trainer", "TensorBatches", "StoreBatches",
           "drop_outliers", "geometric_median", "export_saelens", "import_saelens",
           "export_sparsify", "import_sparsify", "load_any", "topk_encode", "topk_encode_dense",
           "sparse_decode", "sparse_decode_dense", "jumprelu", "step", "evaluate", "model_metrics",
           "plot_history", "plot_density", "fit_power_law", "flops", "train_sweep", "plan", "lr_at",
           "sparsity_at", "init_distributed", "SynthConfig", "SynthData", "synth_eval",
           "synth_scores", "BenchConfig", "bench", "check_sae", "pareto_plot", "write_bench",
           "heldout_batches", "register", "list_saes", "registry_dir", "resolve_sae",
           "shutdown_distributed", "train_device"]

# Used by other mindscope packages: public here so no package imports another's private module.
from ._planner import parse_lr
__all__ += ["parse_lr"]

# Old name, kept importable (not in __all__: steering.strength_sweep is the other sweep).
sweep = train_sweep
