"""Multi-GPU (``torchrun`` + ``DistributedDataParallel``) helpers for the bundle's ``multi_gpu_*.json`` configs.

The configs only wire these functions together; the decisions live here, where they can be tested:

- :func:`distributed_device`: ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU (``LOCAL_RANK``, not the
  global rank, so multi-node runs pick the right GPU);
- :func:`backend_for`: ``nccl`` for a CUDA device, ``gloo`` for the CPU;
- :func:`init_distributed` / :func:`finalize_distributed`: the process group (``env://``, as ``torchrun`` sets it);
- :func:`get_rank` / :func:`get_world_size`: of the default or a given process group (0 and 1 without one);
- :func:`quiet_non_zero_ranks`: only rank 0 logs at INFO level.

Every function also works without a process group (single process), where the rank is 0 and the world size 1.
The DDP wrapper of the network is :func:`fanet_monai.networks.ddp.wrap_ddp`.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "backend_for",
    "distributed_device",
    "finalize_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "quiet_non_zero_ranks",
]


def is_distributed() -> bool:
    """Whether a default process group is up."""
    return dist.is_available() and dist.is_initialized()


def get_rank(group: Any | None = None) -> int:
    """Rank in ``group`` (default: the world), 0 without a process group."""
    return dist.get_rank(group) if is_distributed() else 0


def get_world_size(group: Any | None = None) -> int:
    """Number of processes in ``group`` (default: the world), 1 without a process group."""
    return dist.get_world_size(group) if is_distributed() else 1


def distributed_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` (``torchrun`` sets ``LOCAL_RANK``) if CUDA is available, else CPU.

    Several CPU processes share the CPU; they are told apart by their rank, not by their device.
    """
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def backend_for(device: torch.device | str) -> str:
    """Collective backend for ``device``: ``"nccl"`` for CUDA, ``"gloo"`` otherwise (CPU)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_distributed(device: torch.device | str | None = None, timeout_minutes: float | None = None) -> torch.device:
    """Start the default process group (``env://``) unless one is up, and make ``device`` the current CUDA device.

    Args:
        device: this process's device; default :func:`distributed_device`. The backend follows from it
            (:func:`backend_for`).
        timeout_minutes: collective timeout; default torch's (10 minutes for NCCL, 30 for gloo). A rank that does
            not join a collective within it makes the others fail instead of hanging.

    Returns:
        the device.
    """
    device = distributed_device() if device is None else torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not is_distributed():
        kwargs: dict[str, Any] = {"backend": backend_for(device)}
        if timeout_minutes is not None:
            kwargs["timeout"] = timedelta(minutes=timeout_minutes)
        if device.type == "cuda":
            kwargs["device_id"] = device  # binds the NCCL communicator to this GPU at once
        dist.init_process_group(**kwargs)
    logging.getLogger(__name__).info(
        f"rank {get_rank()} of {get_world_size()}: {dist.get_backend()} on {device}"
    )
    return device


def finalize_distributed() -> None:
    """Tear the default process group down (after a barrier, so no rank leaves while others still communicate)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def quiet_non_zero_ranks(*engines: Any, loggers: tuple[str, ...] = ("fanet_monai",)) -> None:
    """On ranks other than 0, raise the level of the engines' loggers and of ``loggers`` to WARNING.

    Rank 0 reports for everyone (the metrics are all-gathered); the other ranks still print warnings and errors.
    """
    if get_rank() == 0:
        return
    for engine in engines:
        if engine is not None and getattr(engine, "logger", None) is not None:
            engine.logger.setLevel(logging.WARNING)
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
