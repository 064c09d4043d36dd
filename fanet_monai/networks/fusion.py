"""Inference-time optimisation: fold batch normalisation into the preceding convolution."""

from __future__ import annotations

import copy

import torch.nn as nn
from monai.networks.blocks import Convolution
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fuse_conv_bn"]


def fuse_conv_bn(network: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every MONAI ``Convolution``'s batch norm (``conv -> N``) into its convolution, for inference.

    The network must be in ``eval()`` mode (running statistics are folded). Outputs equal the unfused network's up
    to float rounding; training the fused network is not meaningful. Returns the fused network (a copy unless
    ``inplace``).
    """
    if network.training:
        raise ValueError("fuse_conv_bn folds running statistics: call network.eval() first.")
    net = network if inplace else copy.deepcopy(network)
    for module in net.modules():
        if not isinstance(module, Convolution) or module.is_transposed:
            continue
        adn = getattr(module, "adn", None)
        if adn is None or next(iter(adn._modules), None) != "N":  # the norm must directly follow the conv
            continue
        norm = adn.N
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            module.conv = fuse_conv_bn_eval(module.conv, norm)
            adn.N = nn.Identity()
    return net
