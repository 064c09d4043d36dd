"""The masks FANet is fed: the start mask of the first pass and the feedback mask made from a prediction.

Training (the feedback cache's first masks, :class:`~fanet_monai.feedback.transforms.FeedbackMaskd`) and test time
(the first refinement pass of :mod:`fanet_monai.inferers`) use the same :func:`start_mask`; every inferer turns a
pass's logits into the next pass's mask with :func:`feedback_mask`.

Binary and multi-class tasks share one code path; the number of output channels decides
(:func:`check_out_channels`):

- **1 channel** (binary, the paper): sigmoid; foreground where ``sigmoid(logits) > threshold``.
- **K + 1 channels, K >= 2** (K classes, background in channel 0): softmax; the prediction is the argmax (label
  values 0..K), the foreground probability ``1 - softmax(logits)[:, 0]``.

Two output channels are refused: a binary task has one sigmoid channel; a second, softmax, binary path would
duplicate it.

**One mask channel for any number of classes.** The network is fed the foreground of *any* class, never a
per-class mask. MixPool's mask is hard attention on *where to look* (it gates features where the mask is 1), not on
*what* is there; the class is the decoder's job. A per-class mask would cost K mask channels: MixPool blocks with
K mask inputs (more parameters in every stage), a network whose input width depends on K and that no binary
checkpoint fits, K start masks where Otsu's threshold gives only one foreground (no per-class equivalent), and
K-channel masks in the feedback cache (K times the RLE). :func:`foreground_probability`,
:func:`foreground_mask` and :func:`discrete_prediction` are the only places that turn logits into "foreground"
and "prediction"; everything else (inferers, early stop, the feedback cache, the evaluation) calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.utils import convert_to_tensor

from fanet_monai.feedback.otsu import otsu_mask_torch

__all__ = [
    "FEEDBACK_MODES",
    "START_MASKS",
    "check_feedback_mode",
    "check_out_channels",
    "check_start_mask",
    "discrete_prediction",
    "feedback_mask",
    "foreground_mask",
    "foreground_probability",
    "resampling_foreground",
    "start_mask",
]

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


def check_out_channels(channels: int) -> int:
    """``channels`` (the logits' channel count) as an int: 1 (binary, sigmoid) or K + 1 >= 3 (K classes, softmax,
    background in channel 0); ``ValueError`` otherwise (0, or 2: a binary task has one sigmoid channel)."""
    channels = int(channels)
    if channels == 1 or channels >= 3:
        return channels
    raise ValueError(
        f"expected one output channel (binary, sigmoid) or K + 1 >= 3 (K >= 2 classes, softmax, background in "
        f"channel 0), got {channels}."
    )


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """Probability of foreground (any class) of ``logits`` ``(B, C, *spatial)``: ``sigmoid(logits)`` for ``C = 1``,
    ``1 - softmax(logits, 1)[:, :1]`` for ``C = K + 1``. Detached, float32, ``(B, 1, *spatial)``."""
    logits = logits.detach().float()
    if check_out_channels(logits.shape[1]) == 1:
        return torch.sigmoid(logits)
    return 1.0 - torch.softmax(logits, dim=1)[:, :1]


def discrete_prediction(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The prediction as a label map ``(B, 1, *spatial)`` float32: ``sigmoid(logits) > threshold`` as 0/1 for one
    channel; ``argmax`` over the K + 1 channels (label values 0..K; ``threshold`` unused) otherwise. Detached.

    What early stop compares between passes, what the metrics score and what MONAI's ``AsDiscrete`` gives
    (``threshold=0.5`` for binary, ``argmax=True`` for multi-class)."""
    logits = logits.detach().float()
    if check_out_channels(logits.shape[1]) == 1:
        return (torch.sigmoid(logits) > threshold).float()
    return logits.argmax(dim=1, keepdim=True).float()


def foreground_mask(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Foreground of any class, bool ``(B, 1, *spatial)``: ``sigmoid(logits) > threshold`` for one channel,
    ``argmax != 0`` for K + 1 channels (``threshold`` unused).

    Multi-class uses the argmax, not ``1 - p_background > 0.5``: the two differ where the background is the most
    likely class with a probability under 0.5 (e.g. ``(0.4, 0.3, 0.3)``); the argmax agrees with the final
    prediction (:func:`discrete_prediction`), so the fed mask is exactly the predicted label map's foreground."""
    return discrete_prediction(logits, threshold) > 0


def resampling_foreground(logits: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, float]:
    """``(map, level)``: a float32 map ``(B, 1, *spatial)`` to resample (bilinear: inverting an augmentation) and the
    level above which the resampled map is foreground; before resampling ``map > level`` equals
    :func:`foreground_mask`. One channel: ``(sigmoid(logits), threshold)``, the probability (as before multi-class
    support); K + 1 channels: ``(foreground_mask as 0/1, 0.5)``, the argmax rule resampled."""
    if check_out_channels(logits.shape[1]) == 1:
        return foreground_probability(logits), float(threshold)
    return foreground_mask(logits).float(), 0.5


def feedback_mask(logits: torch.Tensor, mode: str = "binary", threshold: float = 0.5) -> torch.Tensor:
    """The mask fed to the next pass, one channel for any number of classes (see the module docstring): detached,
    float32, ``(B, 1, *spatial)`` for ``logits`` ``(B, C, *spatial)``.

    ``"binary"`` (the paper): :func:`foreground_mask` as 0/1 (``sigmoid(logits) > threshold``, or ``argmax != 0``
    for K + 1 channels). ``"probability"``: :func:`foreground_probability` (``sigmoid(logits)``, or
    ``1 - p_background``)."""
    return foreground_mask(logits, threshold).float() if mode == "binary" else foreground_probability(logits)
