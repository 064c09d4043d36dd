"""The masks FANet is fed: the start mask of the first pass and the feedback mask made from a prediction.

Training (the feedback cache's first masks, :class:`~fanet_monai.feedback.transforms.FeedbackMaskd`) and test time
(the first refinement pass of :mod:`fanet_monai.inferers`) use the same :func:`start_mask`; every inferer turns a
pass's logits into the next pass's mask with :func:`feedback_mask`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.utils import convert_to_tensor

from fanet_monai.feedback.otsu import otsu_mask_torch

__all__ = ["FEEDBACK_MODES", "START_MASKS", "check_feedback_mode", "check_start_mask", "feedback_mask", "start_mask"]

START_MASKS: tuple[str, ...] = ("otsu", "otsu_inverted", "empty", "full")
FEEDBACK_MODES: tuple[str, ...] = ("binary", "probability")


def check_start_mask(kind: Any, allow_callable: bool = False, name: str = "start_mask") -> None:
    """Raise ``ValueError`` (naming the argument ``name``) unless ``kind`` names a start mask (one of
    :data:`START_MASKS`), or is a callable when ``allow_callable``."""
    if isinstance(kind, str) and kind in START_MASKS or allow_callable and callable(kind) and not isinstance(kind, str):
        return
    also = " or a callable" if allow_callable else ""
    raise ValueError(f"{name} must be one of {list(START_MASKS)}{also}, got {kind!r}.")


def check_feedback_mode(mode: Any) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of :data:`FEEDBACK_MODES`."""
    if mode not in FEEDBACK_MODES:
        raise ValueError(f"feedback must be one of {list(FEEDBACK_MODES)}, got {mode!r}.")


def start_mask(images: torch.Tensor, kind: str | Callable[[torch.Tensor], torch.Tensor] = "otsu") -> torch.Tensor:
    """The first feedback mask of ``images`` ``(B, C, *spatial)``: a plain tensor ``(B, 1, *spatial)`` on their
    device, in their dtype.

    ``kind``: ``"otsu"`` (paper: blurred grayscale brighter than Otsu's threshold), ``"otsu_inverted"`` (darker than
    the threshold, for dark targets such as vessels and membranes), ``"empty"`` (zeros), ``"full"`` (ones), or a
    callable ``images -> (B, 1, *spatial)`` mask.

    Raises:
        ValueError: an unknown ``kind``, or a callable returning anything but a ``(B, 1, *spatial)`` tensor.
    """
    check_start_mask(kind, allow_callable=True)
    images = convert_to_tensor(images, track_meta=False)
    shape = (images.shape[0], 1, *images.shape[2:])
    if callable(kind):
        mask = kind(images)
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"start_mask callable must return a tensor of shape {shape}, got {got}.")
        mask = convert_to_tensor(mask, track_meta=False)
    elif kind == "empty":
        mask = torch.zeros(shape)
    elif kind == "full":
        mask = torch.ones(shape)
    else:
        mask = otsu_mask_torch(images, invert=kind == "otsu_inverted")
    return mask.to(device=images.device, dtype=images.dtype)


def feedback_mask(logits: torch.Tensor, mode: str = "binary", threshold: float = 0.5) -> torch.Tensor:
    """The mask fed to the next pass: ``sigmoid(logits) > threshold`` as 0/1 (``"binary"``, the paper) or
    ``sigmoid(logits)`` (``"probability"``), detached, float32, same shape as ``logits`` ``(B, 1, *spatial)``."""
    prob = torch.sigmoid(logits.detach().float())
    return (prob > threshold).float() if mode == "binary" else prob
