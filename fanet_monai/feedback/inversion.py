"""Mapping a prediction from the augmented view the network saw back into the feedback cache's frame.

A training transform with feedback is ``Compose([deterministic preprocessing..., FeedbackMaskd, random
augmentation...])``: the cache holds masks in the frame after the preprocessing. :class:`CacheFrameInverse` splits
the transform at its :class:`~fanet_monai.feedback.transforms.FeedbackMaskd` and inverts the augmentation of one
sample (MONAI ``Invertd`` with the fed mask's transform trace) to bring its prediction back into that frame.

The cache holds one binary mask channel for any number of classes: the foreground of any class
(:func:`~fanet_monai.feedback.masks.foreground_mask`; :mod:`fanet_monai.feedback.masks` says why one channel).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from fanet_monai.feedback.cache import FeedbackMaskCache, sample_key
from fanet_monai.feedback.masks import check_out_channels, resampling_foreground
from fanet_monai.feedback.transforms import FeedbackMaskd

__all__ = ["CacheFrameInverse"]

_GRID_PADDING = {"zeros", "border", "reflection"}


def _zero_padding(operations: Any) -> Any:
    """Copy of a transform trace with every padding mode set to zero padding.

    Inverting an augmentation with zero padding makes pixels that the augmented view did not show (rotated, zoomed
    or cropped out) come back as 0 in the coverage channel, instead of border or reflected values.
    """
    if isinstance(operations, list):
        return [_zero_padding(op) for op in operations]
    if isinstance(operations, dict):
        converted = {}
        for key, value in operations.items():
            if key == "padding_mode" and value is not None:
                converted[key] = "zeros" if str(value) in _GRID_PADDING else "constant"
            else:
                converted[key] = _zero_padding(value)
        return converted
    return operations


class CacheFrameInverse:
    """The training transform split at its ``FeedbackMaskd``, and the inverse of the augmentation after it.

    Args:
        transform: the training dataset's ``Compose``; it must hold exactly one ``FeedbackMaskd`` using ``cache``,
            with only deterministic transforms before it (they define the cache frame).
        cache: the feedback mask cache.
        mask_key: key of the fed mask (its transform trace is inverted).
        pred_key: key under which ``Invertd`` handles the prediction.
        threshold: probability above which an inverted pixel is foreground (one output channel; K + 1 channels
            use ``argmax != 0``, see :func:`~fanet_monai.feedback.masks.resampling_foreground`).
        out_channels: the network's output channels ``C`` per pass: 1 (binary) or K + 1 (K classes); a prediction
            of several stacked passes (``loss_on_every_pass``) is ``(P * C, *spatial)``, pass-major.

    Raises:
        ValueError: no or several ``FeedbackMaskd`` for ``cache``, random transforms before it, or
            ``out_channels`` neither 1 nor >= 3.
    """

    def __init__(
        self,
        transform: Compose,
        cache: FeedbackMaskCache,
        mask_key: str = "mask",
        pred_key: str = "pred",
        threshold: float = 0.5,
        out_channels: int = 1,
    ) -> None:
        if not isinstance(transform, Compose):
            raise ValueError(
                f"the feedback handler needs the training dataset's Compose transform, got {type(transform).__name__}."
            )
        flat = transform.flatten().transforms
        positions = [i for i, t in enumerate(flat) if isinstance(t, FeedbackMaskd) and t.cache is cache]
        if len(positions) != 1:
            raise ValueError(
                "the training transform must contain exactly one FeedbackMaskd that uses this handler's cache, "
                f"found {len(positions)}."
            )
        end = positions[0]
        random_first = [type(t).__name__ for t in flat[:end] if hasattr(t, "randomize")]
        if random_first:
            raise ValueError(f"random transforms before FeedbackMaskd would misalign the cached masks: {random_first}.")
        # flattened: ``end`` counts the flattened transforms, and a nested Compose would stop elsewhere
        self.transform = Compose(flat)
        self.cache = cache
        self.mask_key = mask_key
        self.pred_key = pred_key
        self.threshold = threshold
        self.out_channels = check_out_channels(out_channels)
        #: the transform's ``FeedbackMaskd`` (it makes the start masks)
        self.feedback_transform: FeedbackMaskd = flat[end]
        self._end = end
        # inverting a sample's augmentation maps its prediction back into the cache frame (bilinear, then threshold);
        # without augmentation the prediction already is in that frame
        augmentation = flat[end + 1 :]
        self._invert = (
            Invertd(pred_key, Compose(augmentation), orig_keys=mask_key, nearest_interp=False) if augmentation else None
        )

    def preprocess(self, item: Mapping[str, Any]) -> dict:
        """``item`` through the transforms before ``FeedbackMaskd``: the sample in the cache frame."""
        return self.transform(dict(item), end=self._end)

    def to_cache_frame(self, mask: MetaTensor, pred: torch.Tensor) -> tuple[str, np.ndarray]:
        """Map one prediction into the cache frame: its foreground of any class, one channel.

        Args:
            mask: the fed mask ``(1, *spatial)`` of the sample, carrying its augmentation's transform trace.
            pred: logits in the augmented frame, ``(C, *spatial)``, or ``(P * C, *spatial)`` with several passes
                stacked pass-major (the last pass's ``C`` channels are used).

        Returns:
            ``(key, binary mask (1, *cache_spatial) uint8)``.
        """
        key = sample_key(mask.meta)
        c = self.out_channels
        if pred.shape[0] % c:
            raise ValueError(f"{key}: a prediction of {pred.shape[0]} channels is not P passes of out_channels={c}.")
        last = pred.detach().float().cpu()[-c:]  # the last pass when several are stacked
        prob, level = resampling_foreground(last[None], self.threshold)  # (1, 1, *spatial) map, its level
        prob = prob[0]
        coverage = torch.ones_like(prob)
        stacked = MetaTensor(torch.cat([prob, coverage]), meta=dict(mask.meta))
        trace = MetaTensor(mask.detach().cpu(), meta=dict(mask.meta))
        trace.applied_operations = _zero_padding(mask.applied_operations)
        inverted = stacked if self._invert is None else self._invert({self.pred_key: stacked, self.mask_key: trace})[
            self.pred_key
        ]
        new = inverted[:1] > level
        covered = inverted[1:] > 0.5
        if not bool(covered.all()):  # a patch, or a view rotated/cropped: the rest keeps its newest mask
            previous = self.cache.latest(key)
            if previous is not None:
                new = torch.where(covered, new, torch.as_tensor(previous, dtype=torch.bool))
        return key, new.to(torch.uint8).numpy()
