"""MONAI dictionary transforms of fanet-monai: input normalisation and the feedback-mask lookup.

The feedback mask of a sample is put into the data dictionary by :class:`FeedbackMaskd` *after* the deterministic
preprocessing and *before* the random augmentation, so every random spatial transform that lists the mask key moves
the mask together with the image and the label: the mask the network sees is aligned with the image it sees.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Optional

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTrait
from monai.utils import convert_to_tensor

from fanet_monai.feedback.cache import FeedbackMaskCache, sample_key
from fanet_monai.feedback.otsu import otsu_mask_torch

__all__ = ["AsRGBd", "BinarizeLabeld", "FeedbackMaskd"]


class AsRGBd(MapTransform):
    """Make channel-first images 3-channel RGB: grayscale is repeated, an alpha channel is dropped.

    Input ``(C, *spatial)`` with ``C`` in {1, 2 (gray + alpha), 3, 4 (RGBA)}; output ``(3, *spatial)``.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            channels = image.shape[0]
            if channels in (1, 2):
                d[key] = image[:1].repeat(3, *([1] * (image.ndim - 1)))
            elif channels == 4:
                d[key] = image[:3]
            elif channels != 3:
                raise ValueError(f"{key}: expected 1-4 channels (gray, gray+alpha, RGB, RGBA), got {channels}.")
        return d


class BinarizeLabeld(MapTransform):
    """Binary single-channel label ``(1, *spatial)`` float 0/1 from a channel-first mask: foreground where the first
    channel is above ``threshold`` (on the stored scale, e.g. 127 for 0/255 masks, 0 for 0/1 masks).

    Args:
        keys: label keys.
        threshold: value above which a pixel is foreground; ``None`` picks half the mask's maximum value
            (0/1 and 0/255 masks both work).
    """

    def __init__(self, keys: KeysCollection, threshold: Optional[float] = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key][:1]
            threshold = self.threshold if self.threshold is not None else float(label.max()) / 2
            d[key] = (label > threshold).to(torch.float32) if isinstance(label, torch.Tensor) else (
                (label > threshold).astype(np.float32)
            )
        return d


class FeedbackMaskd(MapTransform, RandomizableTrait):
    """Put each sample's feedback mask from a :class:`~fanet_monai.feedback.FeedbackMaskCache` under ``mask_key``.

    The sample is identified by the file name of ``keys[0]`` (its ``filename_or_obj`` meta data), the key MONAI
    Label's ``{"image", "label"}`` dictionaries provide. A sample that is not cached yet gets the paper's initial
    mask: Otsu on the blurred grayscale image, brighter = foreground (``invert=True``: darker = foreground).

    Place it after the deterministic preprocessing (the cache holds masks in that frame) and before the random
    augmentation, and list ``mask_key`` in every random spatial transform (nearest interpolation), so the mask stays
    aligned with the image. It derives from ``RandomizableTrait`` because its output changes from epoch to epoch:
    caching datasets (``CacheDataset``, ``PersistentDataset``) must stop caching before it.

    Data-loader workers read the cache they were given when they started: with MONAI's default (non-persistent)
    workers these are created at the start of each epoch, so they see every mask written during the previous
    epoch. Persistent workers would keep a stale copy, and are rejected by ``FeedbackMaskHandler``.

    Args:
        keys: the image key (one key).
        cache: the feedback mask cache shared with ``FeedbackMaskHandler``.
        mask_key: where to put the mask, float32 ``(1, *spatial)`` MetaTensor with the image's meta data.
        invert: initial mask from Otsu on the inverted image (for dark targets).
    """

    def __init__(
        self, keys: KeysCollection, cache: FeedbackMaskCache, mask_key: str = "mask", invert: bool = False
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"FeedbackMaskd takes one image key, got {self.keys}.")
        self.cache = cache
        self.mask_key = mask_key
        self.invert = invert

    def initial_mask(self, image: torch.Tensor) -> torch.Tensor:
        """Paper's initial mask for a channel-first image ``(C, *spatial)``: float ``(1, *spatial)``."""
        image = convert_to_tensor(image, track_meta=False, dtype=torch.float32)
        return otsu_mask_torch(image[None], invert=self.invert)[0]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        image = d[self.keys[0]]
        key = sample_key(image.meta if isinstance(image, MetaTensor) else d.get(f"{self.keys[0]}_meta_dict"))
        cached = self.cache.get(key)
        if cached is None:
            mask = self.initial_mask(image)
        else:
            if tuple(cached.shape) != (1, *image.shape[1:]):
                raise ValueError(
                    f"{key}: cached feedback mask has shape {tuple(cached.shape)} but the preprocessed image has "
                    f"spatial shape {tuple(image.shape[1:])}; was the cache made with other preprocessing?"
                )
            mask = torch.as_tensor(cached, dtype=torch.float32)
        meta = dict(image.meta) if isinstance(image, MetaTensor) else {"filename_or_obj": key}
        d[self.mask_key] = MetaTensor(mask, meta=meta)
        return d
