"""Random intensity transforms of the paper's augmentation that MONAI lacks: grayscale and channel shuffle."""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from fanet_monai.data.transforms import to_grayscale_torch

__all__ = ["RandChannelShuffled", "RandGrayscaled"]


class _RandImageTransformd(RandomizableTransform, MapTransform):
    """With probability ``prob``, replace each channel-first image ``(C, *spatial)`` by :meth:`apply` of it (same
    type and device). The decision is drawn once per call for all keys."""

    def __init__(self, keys: KeysCollection, prob: float = 0.1, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """The transformed image, a plain tensor ``(C, *spatial)``."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = convert_to_dst_type(self.apply(convert_to_tensor(d[key], track_meta=False)), d[key])[0]
        return d


class RandGrayscaled(_RandImageTransformd):
    """With probability ``prob``, replace an RGB image by its luminance (ITU-R BT.601) in all three channels; other
    channel counts are left as they are."""

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[0] != 3:
            return image
        return to_grayscale_torch(image.float()[None])[0].repeat(3, *([1] * (image.ndim - 1)))


class RandChannelShuffled(_RandImageTransformd):
    """With probability ``prob``, permute the channels of the image randomly."""

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return image[torch.as_tensor(self.R.permutation(image.shape[0]))]
