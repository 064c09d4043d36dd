"""FANet network and its blocks."""

from fanet_monai.networks.blocks import BiasFreeChannelSELayer, MixPool, SEResidualBlock, max_pool_to
from fanet_monai.networks.fanet import FANET_VARIANTS, FANet, mixpool_stage_names
from fanet_monai.networks.fusion import fuse_conv_bn, load_for_inference
from fanet_monai.networks.image_only import ImageOnlyNetwork

__all__ = [
    "BiasFreeChannelSELayer",
    "FANET_VARIANTS",
    "FANet",
    "ImageOnlyNetwork",
    "MixPool",
    "fuse_conv_bn",
    "load_for_inference",
    "SEResidualBlock",
    "max_pool_to",
    "mixpool_stage_names",
]
