"""The paper's augmentation (Sec. IV-A) as MONAI dictionary transforms: invertible warps, intensity transforms,
the paper's list, and the check that an augmentation keeps the feedback masks aligned."""

from fanet_monai.data.augmentation.checks import check_feedback_augmentation
from fanet_monai.data.augmentation.intensity import RandChannelShuffled, RandGrayscaled
from fanet_monai.data.augmentation.paper import PAPER_PROBS, choose_augmentation, paper_augmentation
from fanet_monai.data.augmentation.warps import (
    RandCropResized,
    RandElasticd,
    RandGridDistortd,
    RandOpticalDistortd,
    RandWarpd,
)

__all__ = [
    "PAPER_PROBS",
    "RandChannelShuffled",
    "RandCropResized",
    "RandElasticd",
    "RandGrayscaled",
    "RandGridDistortd",
    "RandOpticalDistortd",
    "RandWarpd",
    "check_feedback_augmentation",
    "choose_augmentation",
    "paper_augmentation",
]
