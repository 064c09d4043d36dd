"""Run a network without feedback on FANet's one-tensor input (for baselines trained by the same bundle)."""

from __future__ import annotations

import torch
import torch.nn as nn

from fanet_monai.networks.slicewise import check_slice_axis, slice_wise

__all__ = ["ImageOnlyNetwork"]


class ImageOnlyNetwork(nn.Module):
    """Wrap a segmentation network (e.g. MONAI ``BasicUNet``) so it accepts FANet's input and ignores the mask.

    Input ``(B, C + 1, *spatial)`` (image channels, then the feedback mask, which is dropped); output whatever the
    wrapped network returns for ``(B, C, *spatial)`` (the first element if it returns a list, as ``BasicUNetPlusPlus``
    does). This lets the FANet bundle train and evaluate MONAI baselines with the identical data, augmentation,
    loss, budget and metrics. ``slice_axis`` runs a 2-D network over the slices of volumes, as
    :class:`~fanet_monai.networks.FANet` does (:mod:`fanet_monai.networks.slicewise`).
    """

    def __init__(self, network: nn.Module, slice_axis: int | None = None) -> None:
        super().__init__()
        self.network = network
        self.slice_axis = check_slice_axis(slice_axis, 2) if slice_axis is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.slice_axis is not None:
            return slice_wise(self._forward, x, self.slice_axis)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x[:, :-1])
        if isinstance(out, (list, tuple)):
            return out[0]
        return out
