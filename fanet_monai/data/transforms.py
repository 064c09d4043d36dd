"""MONAI dictionary transforms that bring loaded images and masks to the network's input conventions.

Images become 3-channel RGB in ``[0, 1]`` (:class:`AsRGBd`, :class:`ScaleToUnitd`), masks single-channel binary
float 0/1, or single-channel integer class codes 0..K for a K-class task (:class:`BinarizeLabeld`);
:func:`to_grayscale_torch` is the one grayscale conversion of the project (the Otsu start mask and the grayscale
augmentation use it).
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

from fanet_monai.data.checks import binary_threshold, nominal_range

__all__ = [
    "LUMA_WEIGHTS",
    "AsRGBd",
    "BinarizeLabeld",
    "ScaleToUnitd",
    "intensity_scale",
    "to_grayscale_torch",
]

LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights for (R, G, B), used for 3-channel images."""


def _compute_dtype(images: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (integers, half precision, float32) is processed in float32."""
    return torch.float64 if images.dtype == torch.float64 else torch.float32


def to_grayscale_torch(images: torch.Tensor) -> torch.Tensor:
    """Grayscale of a batch: BT.601 luma for 3 channels (RGB order), channel mean otherwise.

    Args:
        images: ``(B, C, *spatial)``, any numeric dtype, any device.

    Returns:
        plain tensor (metadata of a MetaTensor is dropped) ``(B, 1, *spatial)`` in float32 (float64 for float64
        input), on the input's device.
    """
    if images.ndim < 3:
        raise ValueError(f"images must be (B, C, *spatial) with at least one spatial dim, got {tuple(images.shape)}.")
    x = convert_to_tensor(images, dtype=_compute_dtype(images), track_meta=False)  # MetaTensor -> plain tensor
    if x.shape[1] == 3:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device)
        return torch.tensordot(x.movedim(1, -1), weights, dims=1).unsqueeze(1)
    return x.mean(dim=1, keepdim=True)

class AsRGBd(MapTransform):
    """Give channel-first images the network's number of input channels: 3 (RGB, the default: grayscale is
    repeated, an alpha channel dropped) or 1 (grayscale: CT/MR volumes, EM; colour converted with
    :func:`to_grayscale_torch`, an alpha channel dropped).

    Input ``(C, *spatial)`` with ``C`` in {1, 2 (gray + alpha), 3, 4 (RGBA)}, 2-D or 3-D; output
    ``(channels, *spatial)``.
    """

    def __init__(self, keys: KeysCollection, channels: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}.")
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            channels = image.shape[0]
            if channels not in (1, 2, 3, 4):
                raise ValueError(f"{key}: expected 1-4 channels (gray, gray+alpha, RGB, RGBA), got {channels}.")
            colour = image[:3] if channels >= 3 else image[:1]
            if self.channels == 3:
                d[key] = colour.repeat(3, *([1] * (image.ndim - 1))) if channels < 3 else colour
            else:
                d[key] = colour if channels < 3 else to_grayscale_torch(colour[None])[0]
        return d


class BinarizeLabeld(MapTransform):
    """Single-channel label ``(1, *spatial)`` float32 from a channel-first mask: binary 0/1 (``num_classes=1``, the
    default), or the class codes 0..K of a K-class task (``num_classes=K >= 2``).

    Binary: the mask is first made single-channel (gray as is, gray+alpha → gray, RGB(A) → max over R, G, B; alpha
    ignored), then thresholded: foreground where it is above ``threshold`` (on the stored scale, e.g. 127 for 0/255
    masks).

    Multi-class: the label must hold integer class codes in one channel (gray, or gray+alpha with the alpha
    ignored; a NIfTI label map): 0 = background, 1..K = the classes. The codes are kept as they are (float32, no
    threshold); for 2-D bitmaps, save them as gray levels 0..K, not as palette colours (a palette image is read as
    its RGB colours). Resize such labels with ``nearest`` interpolation.

    Args:
        keys: label keys.
        threshold: binary only: value above which a pixel is foreground; ``None`` applies
            :func:`fanet_monai.data.checks.binary_threshold`, the rule the data checks use: two levels → their
            midpoint (0/1, 0/255 and palette masks all work), more levels (JPEG noise) → half the nominal range
            (``> 127`` for 8-bit), one level → ``> 0``.
        num_classes: 1 (binary) or the number K of foreground classes (the network then has K + 1 output
            channels).

    Raises:
        ValueError: ``num_classes < 1``, a ``threshold`` with ``num_classes > 1``; when called with
            ``num_classes > 1``: a colour label (3 or 4 channels), or values that are not integers in 0..K (the
            message names the file, ``meta["filename_or_obj"]``, and the values found).
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float | None = None,
        allow_missing_keys: bool = False,
        num_classes: int = 1,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1 (1 = binary), got {num_classes!r}.")
        if num_classes > 1 and threshold is not None:
            raise ValueError("threshold applies to binary labels only; multi-class labels keep their class codes.")
        self.threshold = threshold
        self.num_classes = int(num_classes)

    def _class_codes(self, key: Hashable, label: torch.Tensor) -> torch.Tensor:
        """The class codes ``(1, *spatial)`` float32 of a multi-class ``label`` ``(C, *spatial)``, checked."""
        name = label.meta.get("filename_or_obj", key) if isinstance(label, MetaTensor) else key
        if label.shape[0] > 2:
            raise ValueError(
                f"{name}: a {self.num_classes}-class label must hold its class codes 0..{self.num_classes} in one "
                f"channel, got {label.shape[0]} channels (a colour or palette image?)."
            )
        codes = label[:1].to(torch.float32)
        values = torch.unique(codes.as_tensor() if isinstance(codes, MetaTensor) else codes)
        bad = values[(values != values.round()) | (values < 0) | (values > self.num_classes)]
        if bad.numel():
            found = [int(v) if float(v).is_integer() else v for v in values[:20].tolist()]
            raise ValueError(
                f"{name}: label values must be the class codes 0..{self.num_classes} of a {self.num_classes}-class "
                f"task; found {found}{' ...' if len(values) > 20 else ''}."
            )
        return codes

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = convert_to_tensor(d[key], track_meta=get_track_meta())
            if self.num_classes > 1:
                d[key] = self._class_codes(key, label)
                continue
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
