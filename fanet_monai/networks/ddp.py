"""``DistributedDataParallel`` for FANet: whether DDP must search for unused parameters, and the wrapper the
bundle's ``multi_gpu_train.json`` uses."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from fanet_monai.networks.blocks import MixPool

__all__ = ["needs_unused_parameter_detection", "wrap_ddp"]


def needs_unused_parameter_detection(network: nn.Module) -> bool:
    """Whether DDP must look for parameters that get no gradient (``find_unused_parameters=True``).

    FANet's MixPool thresholds its learned attention map (``> 0.5``): without ``straight_through`` no gradient
    reaches the map's convolutions (about 1 M of the 7.7 M parameters of B4), and DDP would wait for their
    gradients forever. Networks without such MixPool blocks (variant B1, ``straight_through=True``, other MONAI
    networks) use every parameter, and skipping the search saves a graph traversal per step.
    """
    module = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    return any(isinstance(m, MixPool) and not m.straight_through for m in module.modules())


def wrap_ddp(
    network: nn.Module,
    device: torch.device | str,
    find_unused_parameters: bool | None = None,
    sync_batchnorm: bool = False,
    **kwargs: Any,
) -> nn.parallel.DistributedDataParallel:
    """Move ``network`` to ``device`` and wrap it in ``DistributedDataParallel``.

    Args:
        network: the network (e.g. the bundle's ``network_def``).
        device: this rank's device; CUDA devices become DDP's single ``device_ids`` entry, the CPU gets none.
        find_unused_parameters: ``None`` decides with :func:`needs_unused_parameter_detection`.
        sync_batchnorm: convert BatchNorm layers to ``SyncBatchNorm`` (batch statistics over all ranks; CUDA only).
        kwargs: further ``DistributedDataParallel`` arguments.
    """
    device = torch.device(device)
    if find_unused_parameters is None:
        find_unused_parameters = needs_unused_parameter_detection(network)
    if sync_batchnorm:
        if device.type != "cuda":
            raise ValueError("SyncBatchNorm needs CUDA devices; set sync_batchnorm to false for CPU runs.")
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    network = network.to(device)
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        network, device_ids=device_ids, find_unused_parameters=find_unused_parameters, **kwargs
    )
