"""The bundle's one switch between binary and multi-class segmentation: ``num_classes`` (foreground classes).

- ``num_classes = 1`` (binary, the paper): one output channel of logits, sigmoid, Dice-CE with BCE, foreground =
  sigmoid > 0.5, masks saved as 0/255 bitmaps, or 0/1 label maps in NIfTI/NRRD/MHA (:func:`mask_values`).
- ``num_classes = K > 1`` (hippocampus anterior/posterior, tumour sub-regions, organs): ``K + 1`` output channels
  (channel 0 the background), softmax, Dice-CE with one-hot labels, the prediction is the argmax (label codes
  ``0..K``, saved as they are), Dice per class without the background.

The network keeps **one** feedback-mask input channel in both cases: the predicted foreground of any class
(:func:`fanet_monai.feedback.masks.foreground_mask`). These functions build the MONAI objects the configs wire, so
no JSON holds the choice.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Hashable, Mapping

from monai.handlers import MeanDice
from monai.losses import DiceCELoss
from monai.transforms import (Activationsd, AsDiscreted, Identityd, MapTransform, RemoveSmallObjectsd,
                              ScaleIntensityRanged)

from fanet_monai.data.files import BITMAP_SUFFIXES

__all__ = ["activation", "check_labels", "discretization", "mask_values", "mean_dice", "output_channels",
           "segmentation_loss", "small_object_removal"]


def _check(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a whole number >= 1 (1: binary), got {num_classes!r}.")
    return num_classes


def output_channels(num_classes: int) -> int:
    """Channels of the network's logits: 1 for a binary task, ``num_classes + 1`` (with background) otherwise."""
    return 1 if _check(num_classes) == 1 else num_classes + 1


def segmentation_loss(num_classes: int, **kwargs: Any) -> DiceCELoss:
    """MONAI's Dice-CE on the logits: with sigmoid (binary) or softmax and one-hot labels (multi-class)."""
    if _check(num_classes) == 1:
        return DiceCELoss(sigmoid=True, **kwargs)
    return DiceCELoss(softmax=True, to_onehot_y=True, **kwargs)


def activation(num_classes: int, keys: str = "pred") -> Activationsd:
    """Logits to probabilities: sigmoid (binary) or softmax over the channels (multi-class)."""
    binary = _check(num_classes) == 1
    return Activationsd(keys, sigmoid=binary, softmax=not binary)


def discretization(num_classes: int, keys: str = "pred", threshold: float = 0.5) -> AsDiscreted:
    """Probabilities to the prediction: ``> threshold`` as 0/1 (binary) or the argmax, label codes ``0..K``."""
    if _check(num_classes) == 1:
        return AsDiscreted(keys, threshold=threshold)
    return AsDiscreted(keys, argmax=True)


class QuietRemoveSmallObjectsd(RemoveSmallObjectsd):
    """:class:`~monai.transforms.RemoveSmallObjectsd` without scikit-image's deprecation warning about the
    ``min_size`` argument MONAI passes (printed once per image otherwise); same result."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*min_size.*deprecated")
            return super().__call__(data)


def small_object_removal(min_size: int, spatial_dims: int, keys: str = "pred") -> MapTransform:
    """After :func:`discretization`: clear every foreground component smaller than ``min_size`` pixels/voxels
    (MONAI's :class:`~monai.transforms.RemoveSmallObjectsd`, i.e. ``skimage.morphology.remove_small_objects``).

    Components are those of the foreground of any class (``pred > 0``) with full connectivity (8 neighbours in
    2-D, 26 in 3-D), the convention of :mod:`fanet_monai.topology`; a removed component becomes background and the
    kept ones keep their class codes. ``min_size = 0`` (the default of the ``min_object_size`` setting) is the
    identity. Takes the ``(1, *spatial)`` discrete prediction; the size is counted in the grid it is given on (the
    input's native grid in ``fanet infer``)."""
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise ValueError(f"min_object_size must be a whole number of pixels/voxels >= 0, got {min_size!r}.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    if min_size == 0:
        return Identityd(keys)
    # the channel axis counts as one more (size-1) axis for skimage: full connectivity is spatial_dims + 1 hops
    return QuietRemoveSmallObjectsd(keys, min_size=min_size, connectivity=spatial_dims + 1, independent_channels=False)


def mask_values(num_classes: int, keys: str = "pred", output_ext: str = ".png") -> Callable:
    """What a saved mask holds: 0/255 for a binary mask saved as a bitmap (viewable), the label codes as they are
    otherwise (multi-class, and binary volumes: 0/1 in a NIfTI/NRRD/MetaImage label, as declared)."""
    bitmap = str(output_ext).lower() in BITMAP_SUFFIXES
    if _check(num_classes) == 1 and bitmap:
        return ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=0.0, b_max=255.0)
    return Identityd(keys)


def mean_dice(num_classes: int, output_transform: Callable) -> MeanDice:
    """The validation key metric: Dice of the foreground (binary) or the mean Dice over the ``K`` classes
    without the background (multi-class; MONAI one-hot encodes the argmax map and the label)."""
    if _check(num_classes) == 1:
        return MeanDice(include_background=True, output_transform=output_transform)
    return MeanDice(include_background=False, num_classes=num_classes + 1, output_transform=output_transform)


def check_labels(label_names: Mapping[str, str] | None, label_codes: Mapping[str, Any] | None,
                 num_classes: int) -> None:
    """Refuse, before training, class names or codes that do not fit the run's classes: keys must be the class
    codes ``1..num_classes`` (as strings, ``{"1": "Vessel"}``), codes ``{"category": [value, scheme, meaning],
    "type": [value, scheme, meaning]}`` (DICOM coded concepts, e.g. SNOMED CT). Both belong to the run and name what
    it segments in ``run.json``, the packaged metadata, MONAI Label and every DICOM SEG."""
    valid = {str(k) for k in range(1, _check(num_classes) + 1)}
    for what, table in (("label_names", label_names), ("label_codes", label_codes)):
        if not table:
            continue
        if not isinstance(table, Mapping):
            raise ValueError(f"{what} must map class codes to values, e.g. {{\"1\": ...}}, got {table!r}.")
        unknown = sorted(str(k) for k in table if str(k) not in valid)
        if unknown:
            raise ValueError(f"{what}: keys {unknown} are not class codes of this run (1..{num_classes}; 0 is the "
                             "background).")
    for key, code in (label_codes or {}).items():
        entries = [code.get(part) if isinstance(code, Mapping) else None for part in ("category", "type")]
        if not all(isinstance(e, (list, tuple)) and len(e) == 3 and all(str(v) for v in e) for e in entries):
            raise ValueError(f"label_codes[{key!r}] must be {{\"category\": [value, scheme, meaning], \"type\": "
                             "[value, scheme, meaning]} (e.g. SNOMED CT [\"41329004\", \"SCT\", \"Polyp\"]), got "
                             f"{code!r}.")
