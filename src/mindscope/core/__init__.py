"""mindscope.core: model loading, sites, interventions, capture, generate, chat spans."""
from ._capture import Captured
from ._record import Monitor, Recorder
from ._chat import (CHAT_TEMPLATE, PLAIN_TRANSCRIPT, TURN_STOPS, ChatPrompt, as_reply, chat_format,
                    render_chat)
from ._device import (autocast_dtype, dist_info, follow, init_distributed, module_device,
                      resolve_device, shutdown_distributed, to_module)
from ._families import FAMILIES, Family
from ._files import (BadInputError, atomic_dir, atomic_save_tensors, atomic_write, atomic_write_bytes,
                     atomic_write_json, atomic_write_text, guard_settings, read_json,
                     settings_diff)
from ._generate import Generation, Generations
from ._interventions import Ablate, Add, Cap, Clamp, Intervention, Replace, Splice
from ._lm import LM, Batch
from ._load import ALIASES, list_models, load
from ._lock import RunLockedError, run_lock
from ._positions import role, span
from ._sites import Site
from ._vision import ImagePrompt
from ._vision import placeholder as image_placeholder
from ._spec import VectorSpec, load_direction, parse_vector_spec, spec_interventions
from ._vector import PCA, Vector, VectorSet, data_hash, load_vector, pca

__all__ = ["LM", "Batch", "load", "list_models", "ALIASES", "Captured", "Monitor", "ChatPrompt",
           "render_chat", "chat_format", "as_reply", "CHAT_TEMPLATE", "PLAIN_TRANSCRIPT", "TURN_STOPS",
           "Generation", "Generations", "Intervention", "Add", "Ablate", "Clamp", "Cap",
           "Replace", "Splice", "span", "role", "FAMILIES", "Family", "Vector", "VectorSet", "PCA",
           "load_vector", "pca", "data_hash", "BadInputError", "read_json", "run_lock",
           "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save_tensors",
           "atomic_dir", "RunLockedError", "Site", "Recorder", "ImagePrompt", "image_placeholder",
           "VectorSpec", "parse_vector_spec", "spec_interventions", "load_direction", "guard_settings",
           "settings_diff",
           "resolve_device", "module_device", "follow", "to_module", "autocast_dtype",
           "init_distributed", "shutdown_distributed", "dist_info"]

# Used by other mindscope packages: public here so no package imports another's private module.
from ._files import (check_finite, count_nonfinite, inside, load_safetensors, loads_checked,
                     need, need_int, safetensors_header, safetensors_json_meta)
from ._hooks import StopForward
from ._load import cache_dir, resolve
from ._lock import RunLock, locking
from ._positions import RowMeta
__all__ += ["check_finite", "count_nonfinite", "inside", "load_safetensors", "loads_checked",
            "need", "need_int", "safetensors_header", "safetensors_json_meta", "StopForward",
            "cache_dir", "resolve", "RunLock", "locking", "RowMeta"]
