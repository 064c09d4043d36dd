"""The feedback-mask transform: puts each training sample's feedback mask into its data dictionary.

:class:`FeedbackMaskd` runs *after* the deterministic preprocessing and *before* the random augmentation, so every
random spatial transform that lists the mask key moves the mask together with the image and the label: the mask
the network sees is aligned with the image it sees.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_tensor

from fanet_monai.feedback.cache import FeedbackMaskCache, sample_key
from fanet_monai.feedback.masks import check_start_mask, start_mask
from fanet_monai.feedback.sources import MASK_SOURCES, degrade_label, normalize_mix, paste_label_boxes, perturb_mask

__all__ = ["FeedbackMaskd", "REVIEWED_KEY", "feedback_batch_keys"]

#: where :class:`FeedbackMaskd` puts the reviewed pixels for a network with a reviewed channel (bundle option
#: ``reviewed_input``)
REVIEWED_KEY = "reviewed"


class FeedbackMaskd(MapTransform, Randomizable):
    """Put each sample's feedback mask from a :class:`~fanet_monai.feedback.FeedbackMaskCache` under ``mask_key``.

    The sample is identified by the file name of ``keys[0]`` (its ``filename_or_obj`` meta data), the key MONAI
    Label's ``{"image", "label"}`` dictionaries provide. Which mask a sample gets depends on ``source``
    (:mod:`fanet_monai.feedback.sources`): ``"previous"`` (paper: the cached previous-epoch prediction, the start
    mask before there is one), ``"initial"`` (always the start mask) or ``"mixed"`` (drawn per sample from
    ``mix``). The start mask is :func:`fanet_monai.feedback.masks.start_mask` of the preprocessed image: ``"otsu"``
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
        initial: the start mask, one of :data:`fanet_monai.feedback.masks.START_MASKS`.
        source: ``"previous"``, ``"initial"`` or ``"mixed"``.
        mix: probabilities of ``"previous"``, ``"initial"``, ``"empty"``, ``"full"``, ``"perturbed"``,
            ``"degraded"``, ``"corrected"``, ``"corrected_at_errors"`` for the ``"mixed"`` source (default
            :data:`~fanet_monai.feedback.sources.DEFAULT_MIX`).
        label_key: the label, read only by the ``"degraded"`` choice (the label degraded by
            :func:`~fanet_monai.feedback.sources.degrade_label`) and the ``"corrected"`` and
            ``"corrected_at_errors"`` choices (the previous mask with the label pasted into random boxes, or boxes
            on its errors: :func:`~fanet_monai.feedback.sources.paste_label_boxes`).
        reviewed_key: where to put the pixels whose fed mask is the label (float32 0/1 ``(1, *spatial)``), for a
            network with a reviewed channel (``FANet(reviewed_input=True)``): the pasted boxes of the ``corrected``
            choices, nothing for every other choice (a degraded label is rough, not reviewed). List it with the
            mask in every random spatial transform. ``None`` (default): not written.
    """

    def __init__(
        self,
        keys: KeysCollection,
        cache: FeedbackMaskCache,
        mask_key: str = "mask",
        initial: str = "otsu",
        source: str = "previous",
        mix: Mapping[str, float] | None = None,
        label_key: str = "label",
        reviewed_key: str | None = None,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"FeedbackMaskd takes one image key, got {self.keys}.")
        check_start_mask(initial, name="initial")
        if source not in MASK_SOURCES:
            raise ValueError(f"source must be one of {list(MASK_SOURCES)}, got {source!r}.")
        self.cache = cache
        self.mask_key = mask_key
        self.initial = initial
        self.source = source
        self.mix = normalize_mix(mix)
        self.label_key = label_key
        self.reviewed_key = reviewed_key
        self._choice = "previous"

    def initial_mask(self, image: torch.Tensor) -> torch.Tensor:
        """Start mask for a channel-first image ``(C, *spatial)``: float ``(1, *spatial)``."""
        image = convert_to_tensor(image, track_meta=False, dtype=torch.float32)
        return start_mask(image[None], self.initial)[0]

    def randomize(self, data: Any = None) -> None:
        names = list(self.mix)
        self._choice = names[int(self.R.choice(len(names), p=[self.mix[n] for n in names]))]

    def _cached(self, key: str, image: torch.Tensor) -> np.ndarray | None:
        cached = self.cache.get(key)
        if cached is not None and tuple(cached.shape) != (1, *image.shape[1:]):
            raise ValueError(
                f"{key}: cached feedback mask has shape {tuple(cached.shape)} but the preprocessed image has "
                f"spatial shape {tuple(image.shape[1:])}; was the cache made with other preprocessing?"
            )
        return cached

    def _label(self, d: Mapping, key: str, image: torch.Tensor, choice: str) -> np.ndarray:
        """The sample's foreground (``(1, *spatial)`` bool: any class) for the label-reading choices."""
        if self.label_key not in d:
            raise KeyError(f"{key}: the {choice!r} feedback mask source needs the label under "
                           f"{self.label_key!r}; this sample has keys {sorted(map(str, d))}.")
        label = convert_to_tensor(d[self.label_key], track_meta=False).detach().cpu().numpy()
        if tuple(label.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(f"{key}: label spatial shape {tuple(label.shape[1:])} differs from the image's "
                             f"{tuple(image.shape[1:])}; place FeedbackMaskd after the label is resized too.")
        return label[:1] > 0.5

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        image = d[self.keys[0]]
        key = sample_key(image.meta if isinstance(image, MetaTensor) else d.get(f"{self.keys[0]}_meta_dict"))
        choice = self.source
        if self.source == "mixed":
            self.randomize()
            choice = self._choice
        shape = (1, *image.shape[1:])
        boxes = None  # the pasted boxes of the corrected choices
        if choice == "empty":
            mask = torch.zeros(shape)
        elif choice == "full":
            mask = torch.ones(shape)
        elif choice == "degraded":
            label = self._label(d, key, image, choice)
            mask = torch.as_tensor(degrade_label(label, self.R), dtype=torch.float32)
        else:
            cached = None if choice == "initial" else self._cached(key, image)
            if cached is None:
                mask = self.initial_mask(image)
            elif choice == "perturbed":
                mask = torch.as_tensor(perturb_mask(cached, self.R), dtype=torch.float32)
            else:
                mask = torch.as_tensor(cached, dtype=torch.float32)
            if choice in ("corrected", "corrected_at_errors"):
                label = self._label(d, key, image, choice)
                pasted, boxes = paste_label_boxes(mask.numpy() > 0.5, label, self.R,
                                                  at_errors=choice == "corrected_at_errors", return_reviewed=True)
                mask = torch.as_tensor(pasted, dtype=torch.float32)
        meta = dict(image.meta) if isinstance(image, MetaTensor) else {"filename_or_obj": key}
        d[self.mask_key] = MetaTensor(mask, meta=meta)
        if self.reviewed_key is not None:
            reviewed = torch.zeros(shape) if boxes is None else torch.as_tensor(boxes, dtype=torch.float32)
            d[self.reviewed_key] = MetaTensor(reviewed, meta=dict(meta))
        return d


def feedback_batch_keys(reviewed_input: bool = False, corrections: bool = False) -> dict[str, str]:
    """The batch keys the trainer hands its inferer as keyword arguments (MONAI's ``PrepareBatchExtraInput``
    ``extra_keys``): the feedback mask, the reviewed pixels for a network with a reviewed channel, and the label
    when the unrolled inferer corrects masks between passes (``UnrolledFeedbackInferer(correction_prob > 0)``)."""
    keys = {"mask": "mask"}
    if reviewed_input:
        keys[REVIEWED_KEY] = REVIEWED_KEY
    if corrections:
        keys["label"] = "label"
    return keys
