"""mindscope.core: model loading, sites, interventions, capture, generate, chat spans."""
from ._capture import Captured, Monitor
from ._chat import ChatPrompt, render_chat
from ._device import (autocast_dtype, dist_info, follow, init_distributed, module_device,
                      resolve_device, shutdown_distributed, to_module)
from ._families import FAMILIES, Family
from ._files import BadInputError, read_json
from ._generate import Generation
from ._interventions import Ablate, Add, Cap, Clamp, Intervention, Replace, Splice
from ._lm import LM, Batch
from ._load import ALIASES, list_models, load
from ._lock import RunLockedError, run_lock
from ._positions import role, span
from ._vector import PCA, Vector, VectorSet, data_hash, load_vector, pca

__all__ = ["LM", "Batch", "load", "list_models", "ALIASES", "Captured", "Monitor", "ChatPrompt",
           "render_chat", "Generation", "Intervention", "Add", "Ablate", "Clamp", "Cap",
           "Replace", "Splice", "span", "role", "FAMILIES", "Family", "Vector", "VectorSet", "PCA",
           "load_vector", "pca", "data_hash", "BadInputError", "read_json", "run_lock",
           "RunLockedError", "resolve_device", "module_device", "follow", "to_module",
           "autocast_dtype", "init_distributed", "shutdown_distributed", "dist_info"]
