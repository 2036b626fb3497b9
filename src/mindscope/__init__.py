"""mindscope: look inside language models and change what they do from the inside.

>>> import mindscope as ms
>>> # lm = ms.load()                                   # SmolLM2-135M-Instruct, offline
>>> # cap = lm.capture(["Hello"], sites="resid_post.15", positions="last")
>>> # with lm.intervene(ms.Add("resid_post.15", v, scale=4.0)): lm.generate(["Tell me a story"])
"""
from .core import (ALIASES, LM, Ablate, Add, Batch, Cap, Captured, ChatPrompt, Clamp, Generation,
                   ImagePrompt, Intervention, Monitor, Recorder, Replace, Site, Splice, Vector,
                   VectorSet, list_models, load, load_vector, role, span)

__version__ = "0.1.0"
__all__ = ["load", "list_models", "ALIASES", "LM", "Batch", "Captured", "Monitor", "ChatPrompt",
           "Generation", "Intervention", "Add", "Ablate", "Clamp", "Cap", "Replace", "Splice",
           "span", "role", "Site", "Recorder", "ImagePrompt", "Vector", "VectorSet", "load_vector", "__version__"]
