"""Feedback machinery of FANet: initial Otsu masks, run-length encoded masks and the per-sample mask cache."""

from fanet_monai.feedback.cache import UPDATE_POLICIES, FeedbackMaskCache, sample_key
from fanet_monai.feedback.otsu import (
    LUMA_WEIGHTS,
    OtsuMaskD,
    OtsuMaskd,
    OtsuMaskDict,
    gaussian_blur_torch,
    opencv_gaussian_kernel,
    otsu_mask_torch,
    otsu_threshold_torch,
    to_grayscale_torch,
)
from fanet_monai.feedback.rle import RLEMask, rle_decode, rle_encode

__all__ = [
    "FeedbackMaskCache",
    "LUMA_WEIGHTS",
    "OtsuMaskD",
    "OtsuMaskDict",
    "OtsuMaskd",
    "RLEMask",
    "UPDATE_POLICIES",
    "gaussian_blur_torch",
    "opencv_gaussian_kernel",
    "otsu_mask_torch",
    "otsu_threshold_torch",
    "rle_decode",
    "rle_encode",
    "sample_key",
    "to_grayscale_torch",
]
