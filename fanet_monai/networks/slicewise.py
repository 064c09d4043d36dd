"""Volumes through a 2-D network, slice by slice: the ``slice`` volume mode.

A volume ``(B, C, X, Y, Z)`` (or a patch of one) is cut across one spatial axis into its slices, the slices go
through the 2-D network as one batch ``(B * S, C, a, b)``, and the 2-D outputs are stacked back into a volume
``(B, C_out, X, Y, Z)``. Everything around the network stays 3-D: the data chain (crops, flips, the feedback mask as
one more key), the feedback cache (one mask per volume file, each slice a region of it), the Otsu start mask, the
sliding windows, the metrics. So a slice-wise FANet is trained on patches ``k`` slices thick and refined by
windows over the whole volume, with the same code as the 3-D FANet; only the network sees 2-D.

:class:`~fanet_monai.networks.FANet` and :class:`~fanet_monai.networks.ImageOnlyNetwork` take ``slice_axis``;
their state dicts are those of the 2-D network (a slice-wise checkpoint is a 2-D FANet's).
"""

from __future__ import annotations

from typing import Callable

import torch

from fanet_monai.data.patches import VOLUME_MODES, check_volume_mode

__all__ = ["VOLUME_MODES", "check_slice_axis", "network_spatial_dims", "slice_axis_of", "slice_wise"]


def check_slice_axis(slice_axis: int | None, spatial_dims: int) -> int | None:
    """``slice_axis`` (0, 1 or 2: the spatial axis the slices are taken across) for a 2-D network, or ``None``."""
    if slice_axis is None:
        return None
    if isinstance(slice_axis, bool) or slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2 (a spatial axis of the volume) or None, got {slice_axis!r}.")
    if spatial_dims != 2:
        raise ValueError(f"slice_axis runs a 2-D network over the slices of volumes; spatial_dims must be 2, got "
                         f"{spatial_dims}.")
    return int(slice_axis)


def network_spatial_dims(volume_mode: str) -> int:
    """The network's ``spatial_dims`` for a volume mode: 3 (``"3d"``) or 2 (``"slice"``)."""
    return 2 if check_volume_mode(volume_mode) == "slice" else 3


def slice_axis_of(volume_mode: str, slice_axis: int) -> int | None:
    """The network's ``slice_axis`` for a volume mode: ``slice_axis`` in ``"slice"`` mode, ``None`` in ``"3d"``."""
    return int(slice_axis) if check_volume_mode(volume_mode) == "slice" else None


def slice_wise(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, slice_axis: int) -> torch.Tensor:
    """``forward`` (a 2-D network) applied to every slice of ``x`` across ``slice_axis``.

    Args:
        forward: maps ``(N, C, a, b)`` to ``(N, C_out, a, b)``.
        x: ``(B, C, X, Y, Z)``.
        slice_axis: 0, 1 or 2, the spatial axis the slices are taken across.

    Returns:
        ``(B, C_out, X, Y, Z)``: the slices' outputs in place.
    """
    if x.ndim != 5:
        raise ValueError(f"a slice-wise network takes volumes (B, C, X, Y, Z), got shape {list(x.shape)}; for 2-D "
                         "images build the network without slice_axis.")
    dim = slice_axis + 2
    slices = x.movedim(dim, 1)  # (B, S, C, a, b)
    batch, count = slices.shape[:2]
    out = forward(slices.reshape(batch * count, *slices.shape[2:]).contiguous())
    return out.reshape(batch, count, *out.shape[1:]).movedim(1, dim)
