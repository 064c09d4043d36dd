"""MONAI dictionary transforms of fanet-monai: input normalisation and the feedback-mask lookup.

The feedback mask of a sample is put into the data dictionary by :class:`FeedbackMaskd` *after* the deterministic
preprocessing and *before* the random augmentation, so every random spatial transform that lists the mask key moves
the mask together with the image and the label: the mask the network sees is aligned with the image it sees.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Optional

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.data.meta_obj import get_track_meta
from monai.utils import convert_to_tensor

from fanet_monai.data.checks import binary_threshold, nominal_range
from fanet_monai.feedback.cache import FeedbackMaskCache, sample_key
from fanet_monai.feedback.sources import MASK_SOURCES, normalize_mix, perturb_mask
from fanet_monai.inferers import START_MASKS, start_mask

__all__ = ["AsRGBd", "BinarizeLabeld", "FeedbackMaskd", "ScaleToUnitd", "intensity_scale"]


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
    """Binary single-channel label ``(1, *spatial)`` float 0/1 from a channel-first mask.

    The mask is first made single-channel (gray as is, gray+alpha → gray, RGB(A) → max over R, G, B; alpha ignored),
    then thresholded: foreground where it is above ``threshold`` (on the stored scale, e.g. 127 for 0/255 masks).

    Args:
        keys: label keys.
        threshold: value above which a pixel is foreground; ``None`` applies
            :func:`fanet_monai.data.checks.binary_threshold`, the rule the data checks use: two levels → their
            midpoint (0/1, 0/255 and palette masks all work), more levels (JPEG noise) → half the nominal range
            (``> 127`` for 8-bit), one level → ``> 0``.
    """

    def __init__(self, keys: KeysCollection, threshold: Optional[float] = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = convert_to_tensor(d[key], track_meta=get_track_meta())
            channels = label.shape[0]
            gray = label[:1] if channels <= 2 else label[:3].amax(dim=0, keepdim=True)
            threshold = self.threshold
            if threshold is None:
                levels = torch.unique(gray.as_tensor() if isinstance(gray, MetaTensor) else gray)
                threshold = binary_threshold(float(levels[0]), float(levels[-1]), len(levels)) if len(levels) else 0.0
            d[key] = (gray > threshold).to(torch.float32)
        return d


def intensity_scale(image: torch.Tensor) -> float:
    """Full-scale value of an image: from the stored type (``meta["source_dtype"]`` of
    :class:`~fanet_monai.data.readers.BitmapReader`, else the tensor's dtype) — uint8 255, uint16 65535, int16
    32767, int8 127, bool 1 — otherwise from the maximum (:func:`fanet_monai.data.checks.nominal_range`: ≤ 1 → 1,
    ≤ 255 → 255, ≤ 65535 → 65535, else the maximum)."""
    stored = image.meta.get("source_dtype") if isinstance(image, MetaTensor) else None
    if isinstance(stored, (list, tuple)):  # a collated batch
        stored = stored[0] if stored else None
    names = {"uint8": 255.0, "uint16": 65535.0, "int16": 32767.0, "int8": 127.0, "bool": 1.0}
    if stored is not None and str(stored) in names:
        return names[str(stored)]
    dtype = image.dtype if isinstance(image, torch.Tensor) else np.asarray(image).dtype
    if dtype in (torch.uint8, np.uint8):
        return 255.0
    if dtype in (torch.bool, np.bool_):
        return 1.0
    count = image.numel() if isinstance(image, torch.Tensor) else np.asarray(image).size
    return nominal_range(float(image.max())) if count else 1.0


class ScaleToUnitd(MapTransform):
    """Scale images to [0, 1] by the range of their stored type (:func:`intensity_scale`): 8-bit by 255, 16-bit by
    65535 (also when a 16-bit image is dark), float images already in [0, 1] as they are. Output float32, clipped.

    Load with ``LoadImaged(..., reader=BitmapReader, dtype=None)`` so the stored type is known.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], track_meta=get_track_meta())
            scale = intensity_scale(image)
            d[key] = (image.to(torch.float32) / scale).clamp_(0.0, 1.0)
        return d


class FeedbackMaskd(MapTransform, Randomizable):
    """Put each sample's feedback mask from a :class:`~fanet_monai.feedback.FeedbackMaskCache` under ``mask_key``.

    The sample is identified by the file name of ``keys[0]`` (its ``filename_or_obj`` meta data), the key MONAI
    Label's ``{"image", "label"}`` dictionaries provide. Which mask a sample gets depends on ``source``
    (:mod:`fanet_monai.feedback.sources`): ``"previous"`` (paper: the cached previous-epoch prediction, the start
    mask before there is one), ``"initial"`` (always the start mask) or ``"mixed"`` (drawn per sample from
    ``mix``). The start mask is :func:`fanet_monai.inferers.start_mask` of the preprocessed image: ``"otsu"``
    (paper), ``"otsu_inverted"``, ``"empty"`` or ``"full"`` — the same function the test-time inferer uses.

    Place it after the deterministic preprocessing (the cache holds masks in that frame) and before the random
    augmentation, and list ``mask_key`` in every random spatial transform (nearest interpolation), so the mask stays
    aligned with the image. Its output changes from epoch to epoch, so it is ``Randomizable``: caching datasets
    (``CacheDataset``, ``PersistentDataset``) stop caching before it.

    Data-loader workers read the cache they were given when they started: with MONAI's default (non-persistent)
    workers these are created at the start of each epoch, so they see every mask written during the previous
    epoch. Persistent workers would keep a stale copy, and are rejected by ``FeedbackMaskHandler``.

    Args:
        keys: the image key (one key).
        cache: the feedback mask cache shared with ``FeedbackMaskHandler``.
        mask_key: where to put the mask, float32 ``(1, *spatial)`` MetaTensor with the image's meta data.
        initial: the start mask, one of :data:`fanet_monai.inferers.START_MASKS`.
        source: ``"previous"``, ``"initial"`` or ``"mixed"``.
        mix: probabilities of ``"previous"``, ``"initial"``, ``"empty"``, ``"full"``, ``"perturbed"`` for the
            ``"mixed"`` source (default :data:`~fanet_monai.feedback.sources.DEFAULT_MIX`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        cache: FeedbackMaskCache,
        mask_key: str = "mask",
        initial: str = "otsu",
        source: str = "previous",
        mix: Optional[Mapping[str, float]] = None,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"FeedbackMaskd takes one image key, got {self.keys}.")
        if initial not in START_MASKS:
            raise ValueError(f"initial must be one of {list(START_MASKS)}, got {initial!r}.")
        if source not in MASK_SOURCES:
            raise ValueError(f"source must be one of {list(MASK_SOURCES)}, got {source!r}.")
        self.cache = cache
        self.mask_key = mask_key
        self.initial = initial
        self.source = source
        self.mix = normalize_mix(mix)
        self._choice = "previous"

    def initial_mask(self, image: torch.Tensor) -> torch.Tensor:
        """Start mask for a channel-first image ``(C, *spatial)``: float ``(1, *spatial)``."""
        image = convert_to_tensor(image, track_meta=False, dtype=torch.float32)
        return start_mask(image[None], self.initial)[0]

    def randomize(self, data: Any = None) -> None:
        names = list(self.mix)
        self._choice = names[int(self.R.choice(len(names), p=[self.mix[n] for n in names]))]

    def _cached(self, key: str, image: torch.Tensor) -> Optional[np.ndarray]:
        cached = self.cache.get(key)
        if cached is not None and tuple(cached.shape) != (1, *image.shape[1:]):
            raise ValueError(
                f"{key}: cached feedback mask has shape {tuple(cached.shape)} but the preprocessed image has "
                f"spatial shape {tuple(image.shape[1:])}; was the cache made with other preprocessing?"
            )
        return cached

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        image = d[self.keys[0]]
        key = sample_key(image.meta if isinstance(image, MetaTensor) else d.get(f"{self.keys[0]}_meta_dict"))
        choice = self.source
        if self.source == "mixed":
            self.randomize()
            choice = self._choice
        shape = (1, *image.shape[1:])
        if choice == "empty":
            mask = torch.zeros(shape)
        elif choice == "full":
            mask = torch.ones(shape)
        else:
            cached = None if choice == "initial" else self._cached(key, image)
            if cached is None:
                mask = self.initial_mask(image)
            elif choice == "perturbed":
                mask = torch.as_tensor(perturb_mask(cached, self.R), dtype=torch.float32)
            else:
                mask = torch.as_tensor(cached, dtype=torch.float32)
        meta = dict(image.meta) if isinstance(image, MetaTensor) else {"filename_or_obj": key}
        d[self.mask_key] = MetaTensor(mask, meta=meta)
        return d
