"""Building blocks of FANet: the SE-residual block and the MixPool block.

Both are composed from MONAI's :class:`~monai.networks.blocks.Convolution` and layer factories, and take a
``spatial_dims`` argument like every MONAI block (2 for images, 3 for volumes).
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer, Convolution
from monai.networks.layers.utils import get_act_layer

__all__ = [
    "SPATIAL_DIMS",
    "BiasFreeChannelSELayer",
    "MixPool",
    "SEResidualBlock",
    "check_spatial_dims",
    "max_pool_to",
]

#: the spatial dimensions FANet supports: 2 (images ``(B, C, H, W)``) and 3 (volumes ``(B, C, D, H, W)``)
SPATIAL_DIMS: tuple[int, ...] = (2, 3)


def check_spatial_dims(spatial_dims: int) -> int:
    """``spatial_dims`` as an int; ``ValueError`` unless it is one of :data:`SPATIAL_DIMS` (images or volumes)."""
    if isinstance(spatial_dims, bool) or spatial_dims not in SPATIAL_DIMS:
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}.")
    return int(spatial_dims)


def max_pool_to(mask: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Max-pool ``mask`` ``(B, 1, H, W)`` or ``(B, 1, D, H, W)`` down to ``size`` (``[h, w]`` or ``[d, h, w]``); each
    spatial size must divide the mask's exactly, so that this equals max pooling with kernel = stride = the size
    ratio (a pixel or voxel of the result is set when any pixel of its block is set)."""
    if len(size) != mask.dim() - 2 or len(size) < 2 or len(size) > 3:
        raise ValueError(f"expected a size for 2 or 3 spatial dims matching mask {list(mask.shape)}, got {size}.")
    for dim, target in enumerate(size):
        if mask.shape[dim + 2] % target != 0:
            raise ValueError(f"mask size {list(mask.shape[2:])} is not an integer multiple of {size}.")
    if len(size) == 2:
        return F.adaptive_max_pool2d(mask, size)
    return F.adaptive_max_pool3d(mask, size)


class BiasFreeChannelSELayer(ChannelSELayer):
    """MONAI's :class:`~monai.networks.blocks.ChannelSELayer` with bias-free linear layers (as in FANet).

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: number of channels ``C`` of the input.
        hidden_channels: width of the squeeze layer. FANet's reference uses ``1`` (a reduction ratio of ``C``).

    Input and output: ``(B, C, *spatial)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, hidden_channels: int = 1) -> None:
        if not 1 <= hidden_channels <= in_channels:
            raise ValueError(f"hidden_channels must be in [1, {in_channels}], got {hidden_channels}.")
        super().__init__(spatial_dims, in_channels, r=in_channels // hidden_channels)
        # Same structure as MONAI's layer (Linear-ReLU-Linear-Sigmoid), but without biases.
        self.fc[0] = nn.Linear(in_channels, self.fc[0].out_features, bias=False)
        self.fc[2] = nn.Linear(self.fc[0].out_features, in_channels, bias=False)


class SEResidualBlock(nn.Module):
    """Residual block with squeeze-and-excitation on the projection shortcut (FANet, Fig. 2a)::

        x ──conv3-BN-ReLU──conv3-BN──────────(+)──ReLU──> y
        └───conv1-BN──SE─────────────────────┘

    The shortcut is always a 1x1 projection followed by SE, as in the reference implementation.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        out_channels: output channels.
        se_hidden_channels: width of the SE squeeze layer; ``None`` = 1 unit (the reference's reduction ratio ``C``).
        act: activation type and arguments (MONAI layer factory syntax).
        norm: normalization type and arguments.

    Input ``(B, in_channels, *spatial)``; output ``(B, out_channels, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        se_hidden_channels: int | None = None,
        act: tuple | str = ("relu", {"inplace": True}),
        norm: tuple | str = "batch",
    ) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            Convolution(spatial_dims, in_channels, out_channels, kernel_size=3, act=act, norm=norm),
            Convolution(spatial_dims, out_channels, out_channels, kernel_size=3, act=None, norm=norm),
        )
        self.shortcut = nn.Sequential(
            Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, act=None, norm=norm),
            BiasFreeChannelSELayer(spatial_dims, out_channels, se_hidden_channels or 1),
        )
        self.act = get_act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x) + self.shortcut(x))


class MixPool(nn.Module):
    """FANet's MixPool block (Fig. 2b, Eq. 1-2): hard attention from an external mask united with a learned map.

    Given features ``F`` and an external binary mask ``m``:

    1. learned map ``M' = [sigmoid(conv1(ReLU(BN(conv3(F))))) > 0.5]``;
    2. ``M = maxpool(m)`` to the size of ``F`` (no-op when ``m`` already has that size);
    3. ``A = F * (M ∪ M')`` with ``∪`` the logical OR, computed as ``1 - (1 - M)(1 - M')`` (equal for binary
       masks; a fuzzy OR for a probability-valued ``m``);
    4. output ``cat[conv3-BN-ReLU(A), conv3-BN-ReLU(F)]`` with ``C/2`` channels each.

    Because of the hard threshold the learned map gets no gradient in the reference design (its parameters never
    train). ``straight_through=True`` keeps the hard forward value but back-propagates through the sigmoid.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3 (:data:`SPATIAL_DIMS`).
        channels: channels ``C`` of the features (input and output).
        feature_branch: keep the unmasked branch ``conv(F)`` (paper). ``False`` is the ablation "MixPool w/o F_l" of
            Table XI: the masked branch then outputs all ``C`` channels.
        straight_through: straight-through gradient for the learned map (off = reference behaviour).
        act: activation type and arguments.
        norm: normalization type and arguments.

    Inputs: features ``(B, C, *spatial)`` and mask ``(B, 1, *mask_spatial)`` with ``mask_spatial`` an integer
    multiple of ``spatial``. Output: ``(B, C, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        feature_branch: bool = True,
        straight_through: bool = False,
        act: tuple | str = ("relu", {"inplace": True}),
        norm: tuple | str = "batch",
    ) -> None:
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        if feature_branch and channels % 2:
            raise ValueError(f"MixPool with a feature branch needs an even channel count, got {channels}.")
        self.spatial_dims = spatial_dims
        self.straight_through = straight_through
        self.attention_map = nn.Sequential(
            Convolution(spatial_dims, channels, channels, kernel_size=3, act=act, norm=norm),
            Convolution(spatial_dims, channels, 1, kernel_size=1, conv_only=True),
            nn.Sigmoid(),
        )
        branch_channels = channels // 2 if feature_branch else channels
        self.masked_branch = Convolution(spatial_dims, channels, branch_channels, kernel_size=3, act=act, norm=norm)
        self.feature_branch: nn.Module | None = (
            Convolution(spatial_dims, channels, branch_channels, kernel_size=3, act=act, norm=norm)
            if feature_branch
            else None
        )

    def learned_mask(self, features: torch.Tensor) -> torch.Tensor:
        """Binary learned attention map ``M'``, ``(B, 1, *spatial)``, in the dtype of ``features``."""
        if self.straight_through:
            prob = self.attention_map(features)
            return (prob > 0.5).to(prob.dtype) + prob - prob.detach()
        return (self.attention_map(features) > 0.5).to(features.dtype)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.shape[2:] != features.shape[2:]:
            mask = max_pool_to(mask, features.shape[2:])
        mask = mask.to(features.dtype)
        learned = self.learned_mask(features)
        attention = 1.0 - (1.0 - mask) * (1.0 - learned)
        masked = self.masked_branch(features * attention)
        if self.feature_branch is not None:
            return torch.cat([masked, self.feature_branch(features)], dim=1)
        return masked
