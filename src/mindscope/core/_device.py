"""One device policy, and torch.distributed start-up and teardown for torchrun.

The policy: the model's device (or ``--device``) decides. SAEs, vectors, probes, lenses and
buffers follow it (``follow``); a vector added inside a module moves to that module's device
(``to_module``), so a model sharded with ``device_map="auto"`` works site by site. CUDA
training runs under bf16 autocast by default (``autocast_dtype``); metrics, QR and PCA
accumulate in fp32.

>>> resolve_device("cpu")
device(type='cpu')
>>> follow(torch.ones(2, dtype=torch.bfloat16), torch.zeros(1)).dtype
torch.bfloat16

Distributed (torchrun): ``init_distributed(device)`` joins the process group (NCCL when the
ranks use CUDA, gloo otherwise), pins rank r to ``cuda:LOCAL_RANK`` and registers a teardown
that destroys the group before the interpreter shuts down. ``shutdown_distributed()`` ends a
run cleanly: every rank waits for the others, then the group is destroyed. Without it a rank
that leaves while gloo's worker threads still hold work dies in C++ ("terminate called without
an active exception", SIGABRT) at interpreter exit.
"""
from __future__ import annotations

import atexit
import datetime
import logging
import os
from typing import Optional, Union

import torch
import torch.distributed as dist

from ._files import BadInputError

log = logging.getLogger(__name__)
DeviceLike = Union[str, torch.device, None]


def cuda_missing_error(request) -> BadInputError:
    return BadInputError(f"device {str(request)!r} requested but no CUDA GPU is visible to torch "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})",
                         fix="use --device cpu (or device='cpu'), or install a CUDA build of "
                             "torch on a machine with a GPU")


def resolve_device(device: DeviceLike = None) -> torch.device:
    """'auto'/None -> ``$MINDSCOPE_DEVICE`` if set, else cuda if visible, else cpu; 'cuda'
    without CUDA -> BadInputError naming the fix; 'cuda:N' past the GPU count -> BadInputError."""
    if device is None or (isinstance(device, str) and device.strip().lower() in ("auto", "")):
        env = os.environ.get("MINDSCOPE_DEVICE", "").strip().lower()
        if env not in ("", "auto"):
            return resolve_device(env)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError):
        raise BadInputError(f"unknown device {device!r}", fix="use cpu, cuda, cuda:N or auto") \
            from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise cuda_missing_error(device)
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise BadInputError(f"device {str(device)!r} requested but only {n} GPU(s) are "
                                "visible", fix=f"use cuda:0..cuda:{n - 1} or set "
                                               "CUDA_VISIBLE_DEVICES")
    return dev


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (cpu for an empty module)."""
    for t in module.parameters(recurse=True):
        return t.device
    for t in module.buffers(recurse=True):
        return t.device
    return torch.device("cpu")


def follow(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` on ``like``'s device (dtype kept): the one move every follower uses."""
    return t if t.device == like.device else t.to(like.device)


def to_module(t: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """``t`` on the device of ``module`` (for a vector added inside a sharded model)."""
    dev = module_device(module)
    return t if t.device == dev else t.to(dev)


def autocast_dtype(device: DeviceLike, bf16: Optional[bool] = None) -> Optional[torch.dtype]:
    """bf16 autocast for training: on by default on CUDA, off by default on CPU; ``bf16``
    forces it either way. None means no autocast."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    on = (dev.type == "cuda") if bf16 is None else bool(bf16)
    return torch.bfloat16 if on else None


# ---- torch.distributed ---------------------------------------------------------------------------
_REGISTERED = False


def dist_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _world_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed(device: DeviceLike = None, backend: Optional[str] = None,
                     timeout: Optional[datetime.timedelta] = None) -> tuple[int, int, torch.device]:
    """Join the process group under torchrun (WORLD_SIZE > 1); returns (rank, world, device).

    ``device`` follows the policy ('auto': CUDA if visible). With CUDA, rank r uses
    ``cuda:LOCAL_RANK`` and NCCL; on CPU, gloo. ``backend='nccl'`` without CUDA, or more ranks
    on a node than GPUs, raise ``BadInputError`` before any process group is made. Outside
    torchrun it returns (0, 1, device) and starts nothing."""
    global _REGISTERED
    dev = resolve_device(device)
    if backend is not None and backend not in ("gloo", "nccl"):
        raise BadInputError(f"unknown distributed backend {backend!r}", fix="use gloo or nccl")
    if backend == "nccl" and dev.type != "cuda":
        raise BadInputError("backend 'nccl' needs CUDA GPUs but the ranks run on "
                            f"{dev.type}" + ("" if torch.cuda.is_available() else
                                             " (no CUDA GPU is visible)"),
                            fix="use backend='gloo' on CPU, or --device cuda on a GPU machine")
    if dist.is_available() and dist.is_initialized():
        rank, world = dist_info()
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return rank, world, dev
    if _world_env() <= 1:
        return 0, 1, dev
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        n = torch.cuda.device_count()
        if local >= n:
            raise BadInputError(f"torchrun started local rank {local} but this node has {n} "
                                "GPU(s)", fix=f"use torchrun --nproc-per-node {n} (one rank per "
                                              "GPU), or --device cpu for gloo")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
    kw = {"timeout": timeout} if timeout is not None else {}
    if chosen == "nccl":
        kw["device_id"] = dev
    dist.init_process_group(chosen, **kw)
    if not _REGISTERED:
        atexit.register(_teardown)
        _REGISTERED = True
    log.info("rank %d of %d on %s (%s)", dist.get_rank(), dist.get_world_size(), dev, chosen)
    return dist.get_rank(), dist.get_world_size(), dev


def _teardown() -> None:
    """atexit: destroy a group still alive while the interpreter is whole (no barrier: a rank
    that failed must not wait for peers that may never come)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def shutdown_distributed() -> None:
    """End a distributed run cleanly: wait for every rank, then destroy the process group.
    A no-op outside torch.distributed. Call it on the success path; errors leave the group
    to the atexit teardown so no rank waits on a peer that died."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
