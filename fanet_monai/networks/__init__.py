"""FANet network and its blocks."""

from fanet_monai.networks.blocks import BiasFreeChannelSELayer, MixPool, SEResidualBlock, max_pool_to
from fanet_monai.networks.fanet import FANET_VARIANTS, FANet, mixpool_stage_names

__all__ = [
    "BiasFreeChannelSELayer",
    "FANET_VARIANTS",
    "FANet",
    "MixPool",
    "SEResidualBlock",
    "max_pool_to",
    "mixpool_stage_names",
]
