"""FANet network and its blocks."""

from fanet_monai.networks.blocks import (
    SPATIAL_DIMS,
    BiasFreeChannelSELayer,
    MixPool,
    SEResidualBlock,
    check_spatial_dims,
    max_pool_to,
)
from fanet_monai.networks.fanet import FANET_VARIANTS, FANet, mixpool_stage_names
from fanet_monai.networks.fusion import fuse_conv_bn, load_for_inference
from fanet_monai.networks.image_only import ImageOnlyNetwork
from fanet_monai.networks.onnx_runtime import RUNTIMES, OnnxRuntimeNetwork, export_onnx
from fanet_monai.networks.slicewise import VOLUME_MODES, network_spatial_dims, slice_axis_of, slice_wise

__all__ = [
    "FANET_VARIANTS",
    "SPATIAL_DIMS",
    "VOLUME_MODES",
    "BiasFreeChannelSELayer",
    "FANet",
    "ImageOnlyNetwork",
    "MixPool",
    "OnnxRuntimeNetwork",
    "RUNTIMES",
    "SEResidualBlock",
    "check_spatial_dims",
    "export_onnx",
    "fuse_conv_bn",
    "load_for_inference",
    "max_pool_to",
    "mixpool_stage_names",
    "network_spatial_dims",
    "slice_axis_of",
    "slice_wise",
]
