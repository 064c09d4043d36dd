"""Feedback machinery of FANet: start masks (Otsu), the per-sample mask cache (run-length encoded), where a
training sample's mask comes from, the transform that puts it in the data, the handlers that store the predictions,
and the cache's synchronisation across ranks."""

from fanet_monai.feedback.cache import UPDATE_POLICIES, FeedbackMaskCache, sample_key
from fanet_monai.feedback.masks import FEEDBACK_MODES, START_MASKS, feedback_mask, start_mask
from fanet_monai.feedback.otsu import gaussian_blur_torch, opencv_gaussian_kernel, otsu_mask_torch, otsu_threshold_torch
from fanet_monai.feedback.rle import RLEMask, rle_decode, rle_encode
from fanet_monai.feedback.transforms import FeedbackMaskd

__all__ = [
    "FEEDBACK_MODES",
    "FeedbackMaskCache",
    "FeedbackMaskd",
    "RLEMask",
    "START_MASKS",
    "UPDATE_POLICIES",
    "feedback_mask",
    "gaussian_blur_torch",
    "opencv_gaussian_kernel",
    "otsu_mask_torch",
    "otsu_threshold_torch",
    "rle_decode",
    "rle_encode",
    "sample_key",
    "start_mask",
]
