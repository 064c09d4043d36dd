"""Run a network without feedback on FANet's one-tensor input (for baselines trained by the same bundle)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ImageOnlyNetwork"]


class ImageOnlyNetwork(nn.Module):
    """Wrap a segmentation network (e.g. MONAI ``BasicUNet``) so it accepts FANet's input and ignores the mask.

    Input ``(B, C + 1, *spatial)`` (image channels, then the feedback mask, which is dropped); output whatever the
    wrapped network returns for ``(B, C, *spatial)`` (the first element if it returns a list, as ``BasicUNetPlusPlus``
    does). This lets the FANet bundle train and evaluate MONAI baselines with the identical data, augmentation,
    loss, budget and metrics.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x[:, :-1])
        if isinstance(out, (list, tuple)):
            return out[0]
        return out
