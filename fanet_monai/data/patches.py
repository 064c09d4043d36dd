"""The two ways an image reaches the network, one setting (``input_mode``) for every bundle config:

- ``"resize"``: the whole image resized to ``image_size`` (the paper; predictions resized back to the input's size).
- ``"patch"``: the image keeps its own size (nnU-Net's and MONAI's zoo's way). Training samples ``patch_size``
  patches (:class:`RandPatchesd`: MONAI's ``RandCropByPosNegLabeld``, half of them centred on foreground), after the
  feedback mask was put into the sample, so image, label and mask are cut by the same crop; images smaller than a
  patch are zero-padded first (:class:`~monai.transforms.SpatialPadd`). Validation, evaluation and inference run
  every refinement pass as a :class:`~monai.inferers.SlidingWindowInferer` over ``cat(image, mask)`` of the whole
  image or volume (:func:`window_inferer`), so memory is bounded by the window, not by the image.

The feedback cache stays in the frame of the preprocessed whole image: a patch's prediction is mapped back by
inverting the augmentation and then the crop (:meth:`RandPatchesd.inverse` pads the patch back into the image with
zeros; the zero "coverage" outside it keeps the cached mask there, :class:`~fanet_monai.feedback.inversion
.CacheFrameInverse`). Where patches of one epoch overlap, the patch stored last wins.

The same functions serve 2-D and 3-D (``patch_size`` of length 2 or 3).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import BorderPad, Compose, InvertibleTransform, RandCropByPosNegLabeld, Resized, SpatialPadd
from monai.utils import TraceKeys

from fanet_monai.data.checks import DataReport

__all__ = [
    "INPUT_MODES",
    "VOLUME_MODES",
    "RandPatchesd",
    "WindowInferer",
    "check_input_mode",
    "check_volume_mode",
    "label_resize_mode",
    "evaluation_batch_size",
    "network_input_size",
    "note_small_images",
    "patch_sampling",
    "resizing",
    "window_inferer",
]

logger = logging.getLogger(__name__)

INPUT_MODES: tuple[str, ...] = ("resize", "patch")


def check_input_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`INPUT_MODES`, else a ``ValueError`` naming the setting."""
    if mode not in INPUT_MODES:
        raise ValueError(f"input_mode must be one of {list(INPUT_MODES)}, got {mode!r}.")
    return mode


#: how a volume is run (``volume.json``'s ``volume_mode``): ``"3d"`` (the 3-D network on patches) or ``"slice"``
#: (a 2-D network over the slices of the same patches, :mod:`fanet_monai.networks.slicewise`)
VOLUME_MODES: tuple[str, ...] = ("3d", "slice")


def check_volume_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`VOLUME_MODES`, else a ``ValueError`` naming the setting."""
    if mode not in VOLUME_MODES:
        raise ValueError(f"volume_mode must be one of {list(VOLUME_MODES)}, got {mode!r}.")
    return mode


class RandPatchesd(RandCropByPosNegLabeld, InvertibleTransform):
    """MONAI's ``RandCropByPosNegLabeld`` (``num_samples`` patches per sample, a fraction ``pos / (pos + neg)``
    centred on a foreground pixel of ``label_key``) that can be inverted: :meth:`inverse` pads a patch, or a
    prediction made on it, back to the size of the image it was cut from, with zeros outside the patch (MONAI's
    multi-sample crop records the crop in the trace but has no inverse of its own)."""

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            transform = self.pop_transform(d[key], check=False)  # pushed by the array cropper inside this transform
            if transform[TraceKeys.CLASS_NAME] != type(self.cropper).__name__:
                raise RuntimeError(f"{key}: the last transform applied is {transform[TraceKeys.CLASS_NAME]}, not the "
                                   f"patch crop; invert the transforms after it first.")
            cropped = transform[TraceKeys.EXTRA_INFO][TraceKeys.EXTRA_INFO]["cropped"]
            pad = BorderPad(cropped, mode="constant")
            with pad.trace_transform(False):
                d[key] = pad(d[key])
        return d


def resizing(mode: str, image_size: Sequence[int], keys: Sequence[str] = ("image", "label"),
             interpolation: Sequence[str] = ("bilinear", "nearest"), anti_aliasing: bool = False) -> Compose:
    """The preprocessing step that sets the image size, as a ``Compose`` to place in a transform list:
    ``Resized(keys, image_size, mode=interpolation)`` in ``"resize"`` mode (``anti_aliasing``: Gaussian smoothing
    of the keys not resized by ``"nearest"`` or ``"area"`` before downsampling; a label resized by ``"area"``
    becomes the fraction of each output pixel it covers, a soft target that keeps 1-px structures), nothing in
    ``"patch"`` mode (native size)."""
    if check_input_mode(mode) == "patch":
        return Compose([])
    aliasing = [bool(anti_aliasing) and m not in ("nearest", "area") for m in interpolation]
    return Compose([Resized(list(keys), spatial_size=list(image_size), mode=list(interpolation),
                            anti_aliasing=aliasing)])


def label_resize_mode(mode: str, num_classes: int = 1) -> str:
    """How labels are resized in ``"resize"`` mode: ``mode`` (``"area"``: the fraction of each output pixel a
    binary label covers, a soft target that keeps 1-px structures; ``"nearest"``), always ``"nearest"`` for
    multi-class labels (class codes cannot be averaged)."""
    if mode not in ("area", "nearest", "bilinear"):
        raise ValueError(f"resize_label_mode must be 'area', 'nearest' or 'bilinear', got {mode!r}.")
    return "nearest" if num_classes > 1 else mode


def network_input_size(mode: str, image_size: Sequence[int], patch_size: Sequence[int]) -> list[int]:
    """The spatial size of a training sample: ``patch_size`` in ``"patch"`` mode, ``image_size`` otherwise."""
    return [int(s) for s in (patch_size if check_input_mode(mode) == "patch" else image_size)]


def patch_sampling(mode: str, patch_size: Sequence[int], num_samples: int = 4,
                   keys: Sequence[str] = ("image", "label", "mask", "reviewed"), label_key: str = "label",
                   pos: float = 1.0, neg: float = 1.0) -> list:
    """The first training augmentation steps in ``"patch"`` mode: pad images smaller than ``patch_size`` with
    zeros, then cut ``num_samples`` patches (:class:`RandPatchesd`); ``[]`` in ``"resize"`` mode. Place them right
    after ``FeedbackMaskd`` with the mask among ``keys`` (keys a sample lacks, such as the reviewed pixels of a
    network without a reviewed channel, are skipped)."""
    if check_input_mode(mode) == "resize":
        return []
    if num_samples < 1:
        raise ValueError(f"patches_per_image must be >= 1, got {num_samples}.")
    size = [int(s) for s in patch_size]
    return [
        SpatialPadd(list(keys), spatial_size=size, mode="constant", allow_missing_keys=True),
        RandPatchesd(list(keys), label_key=label_key, spatial_size=size, pos=pos, neg=neg, num_samples=num_samples,
                     allow_missing_keys=True),
    ]


class WindowInferer(SlidingWindowInferer):
    """MONAI's :class:`~monai.inferers.SlidingWindowInferer`, saying once (a log line) when an image is smaller
    than a window: MONAI pads it with zeros to the window and crops the result back."""

    _noted = False

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        shape = tuple(inputs.shape[2:])
        if not self._noted and any(s < r for s, r in zip(shape, self.roi_size)):
            logger.info("an input of spatial size %s is smaller than the %s window: zero-padded to it, the result "
                        "cropped back (further such inputs are not reported)", shape, tuple(self.roi_size))
            self._noted = True
        return super().__call__(inputs, network, *args, **kwargs)


def note_small_images(report: DataReport, mode: str, patch_size: Sequence[int]) -> list[str]:
    """In ``"patch"`` mode, say once (a log line, and the returned notes) how many images of the checked data
    (``report`` of :func:`~fanet_monai.data.checks.check_datalist` or of
    :func:`~fanet_monai.data.volumes.check_volume_datalist`) are smaller than a patch in some dimension:
    they are zero-padded to the patch (:func:`patch_sampling`)."""
    if check_input_mode(mode) == "resize":
        return []
    # 2-D reports give each image's (H, W) ``size``, volume reports its stored ``shape`` (before any resampling)
    images = {info.image: getattr(info, "size", None) or info.shape for items in report.splits.values()
              for info in items}
    small = {path: size for path, size in images.items() if any(s < p for s, p in zip(size, patch_size))}
    if not small:
        return []
    smallest = min(small.values(), key=lambda size: int(np.prod(size)))
    note = (f"{len(small)} of {len(images)} images are smaller than the {tuple(patch_size)} patch in some dimension "
            f"(smallest {smallest}, e.g. {os.path.basename(next(iter(small)))}): they are zero-padded to the patch; "
            "a smaller --patch_size avoids it.")
    logger.warning(note)
    return [note]


def window_inferer(mode: str, patch_size: Sequence[int], overlap: float = 0.25, sw_batch_size: int = 4,
                   blend: str = "gaussian") -> SlidingWindowInferer | None:
    """What each refinement pass runs on ``cat(image, mask)``: a :class:`~monai.inferers.SlidingWindowInferer`
    with ``patch_size`` windows in ``"patch"`` mode (images smaller than a window are padded and cropped back by
    MONAI), ``None`` (one network call on the whole resized image) in ``"resize"`` mode."""
    if check_input_mode(mode) == "resize":
        return None
    return WindowInferer(roi_size=[int(s) for s in patch_size], sw_batch_size=sw_batch_size, overlap=overlap,
                         mode=blend)


def evaluation_batch_size(mode: str, batch_size: int) -> int:
    """Batch size of validation, evaluation and inference: ``batch_size`` for resized images (all the same size),
    1 at native size (sizes differ; each pass already batches the windows)."""
    return int(batch_size) if check_input_mode(mode) == "resize" else 1
