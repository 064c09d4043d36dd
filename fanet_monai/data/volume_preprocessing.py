"""Volume preprocessing as MONAI's model-zoo 3-D bundles and nnU-Net do it, and the caching of its result.

``bundle/configs/volume.json`` puts :meth:`VolumeSettings.transform` where the 2-D configs scale intensities (the
``intensity`` slot of ``preprocessing`` in ``train.json`` and ``inference.json``), after loading and before the
feedback mask, so the whole chain stays in the preprocessed frame the feedback cache is kept in:

1. ``Orientationd`` to ``orientation`` (``"RAS"``; ``None`` keeps the stored axis order);
2. ``Spacingd`` to the target spacing (image bilinear, label nearest). ``target_spacing`` ``None`` means nnU-Net's
   rule: the per-axis **median spacing of the training set**, read from the headers of the run's training split
   before training (:func:`median_spacing`) and recorded in ``run.json`` (the resolved list, never ``None``), where
   inference, evaluation through ``fanet`` and MONAI Label find it (:class:`VolumeSettings` says which source wins);
3. intensity by ``modality`` (:func:`intensity_transform`): ``"CT"`` clips the window ``ct_window`` (HU, default
   ``[-1000, 1000]``) and scales it to ``[0, 1]``; ``"MR"`` z-scores each channel over its nonzero voxels;
   ``"other"`` scales the 0.5-99.5 percentiles to ``[0, 1]`` (the layer's earlier behaviour);
4. ``CropForegroundd`` (``crop_foreground``, margin ``crop_margin`` voxels) to the box of the foreground after the
   intensity step: ``> 0`` for CT and "other" (above the window's floor, above the lowest percentile), ``!= 0`` for MR
   (nnU-Net's nonzero region). A volume without foreground is kept whole.

Every spatial step is invertible: ``inference.json``'s ``Invertd`` over ``preprocessing`` undoes the crop, the
resampling and the reorientation, and ``SaveImaged(resample=False)`` writes the mask with the input's own affine. The
feedback cache simply holds masks of the cropped, resampled volume.

:func:`fanet_monai.data.caching.preprocessed_dataset` caches what this chain produces (``volume.json`` sets
``dataset_cache`` to ``"memory"``; see there for the choices and why).

How ``volume.json`` wires it, laid over ``train.json``, ``train.json`` + ``evaluate.json`` or ``inference.json``:
``volume_settings`` (a :class:`VolumeSettings`) is given ``@run_owner`` (the training run; ``null`` in
``inference.json``) and fills the ``intensity`` slot with its transform.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    LoadImage,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from fanet_monai.data.datalist import load_datalist
from fanet_monai.data.files import NIFTI_SUFFIXES, file_suffix
from fanet_monai.errors import InputError
from fanet_monai.data.patches import check_volume_mode

__all__ = [
    "MODALITIES",
    "RequestSafeSpacingd",
    "VolumeSettings",
    "axis_spacing",
    "foreground_crop",
    "intensity_transform",
    "median_spacing",
]

logger = logging.getLogger(__name__)

#: intensity schemes by imaging modality (:func:`intensity_transform`)
MODALITIES: tuple[str, ...] = ("CT", "MR", "other")
#: axis code letters of MONAI's (and NIfTI's) RAS world, given explicitly to ``Orientationd``
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
#: the percentiles the ``"other"`` modality scales to ``[0, 1]``
OTHER_PERCENTILES: tuple[float, float] = (0.5, 99.5)


def _modality(modality: str) -> str:
    found = {m.lower(): m for m in MODALITIES}.get(str(modality).lower())
    if found is None:
        raise InputError(f"modality must be one of {list(MODALITIES)}, got {modality!r}.")
    return found


# ------------------------------------------------------------------------------------------------ target spacing
def axis_spacing(affine: np.ndarray, orientation: str | None = "RAS") -> list[float]:
    """Voxel spacing of each array axis after reorienting to ``orientation``, from a voxel → RAS world ``affine``.

    ``orientation`` ``None`` gives the spacing of the stored axes. ``axis_spacing(diag(-2, -1, 3, 1), "RAS")`` is
    ``[2, 1, 3]``; a volume stored S-A-R gives its spacings in R-A-S order.
    """
    affine = np.asarray(affine, dtype=np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if orientation is None:
        return [float(z) for z in zooms]
    stored = nib.orientations.io_orientation(affine)  # row i: the world axis of stored axis i
    target = nib.orientations.axcodes2ornt(tuple(orientation))  # row j: the world axis of output axis j
    by_world = {int(world): zooms[i] for i, (world, _) in enumerate(stored)}
    return [float(by_world[int(world)]) for world, _ in target]


def _affine(path: str | os.PathLike) -> np.ndarray:
    """The voxel → RAS affine of a volume: from the NIfTI header (no voxels read), else as MONAI's reader gives it."""
    if file_suffix(path) in NIFTI_SUFFIXES:
        return np.asarray(nib.load(str(path)).affine)
    image = LoadImage(image_only=True)(str(path))
    return np.asarray(image.affine)


def median_spacing(paths: Sequence[str | os.PathLike], orientation: str | None = "RAS") -> list[float]:
    """nnU-Net's target spacing: the median over ``paths`` of each axis's spacing (:func:`axis_spacing`).

    Raises:
        InputError: no paths, or a file whose header cannot be read (named).
    """
    if not paths:
        raise InputError("no training volumes to compute the median spacing from; set target_spacing.")
    spacings = []
    for path in paths:
        try:
            spacings.append(axis_spacing(_affine(path), orientation))
        except Exception as error:  # an unreadable header is the file's fault: name it
            raise InputError(f"{path}: cannot read the voxel spacing from its header ({error}).") from error
    return [round(float(s), 6) for s in np.median(np.asarray(spacings), axis=0)]


def _checked_spacing(spacing: Sequence[float], where: str) -> list[float]:
    values = [float(s) for s in spacing] if isinstance(spacing, (list, tuple)) else None
    if values is None or len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise InputError(f"{where} must be three positive spacings in mm (e.g. [1.0, 1.0, 2.5]), got {spacing!r}.")
    return values


# --------------------------------------------------------------------------------------------------- transforms
def intensity_transform(
    modality: str = "other",
    ct_window: Sequence[float] = (-1000.0, 1000.0),
    keys: str | Sequence[str] = "image",
) -> MapTransform:
    """The intensity step for ``modality`` (one of :data:`MODALITIES`, any case):

    - ``"CT"``: ``ScaleIntensityRanged`` from the window ``ct_window = [low, high]`` (HU) to ``[0, 1]``, clipped;
    - ``"MR"``: ``NormalizeIntensityd(nonzero=True, channel_wise=True)``: zero mean and unit variance over each
      channel's nonzero voxels; the zero background stays 0;
    - ``"other"``: ``ScaleIntensityRangePercentilesd`` from the 0.5th-99.5th percentiles to ``[0, 1]``, clipped.
    """
    modality = _modality(modality)
    if modality == "CT":
        low, high = (float(v) for v in ct_window)
        if not low < high:
            raise InputError(f"ct_window must be [low, high] with low < high (HU), got {list(ct_window)}.")
        return ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    if modality == "MR":
        return NormalizeIntensityd(keys, nonzero=True, channel_wise=True)
    lower, upper = OTHER_PERCENTILES
    return ScaleIntensityRangePercentilesd(keys, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)


def _positive_or_all(image: torch.Tensor) -> torch.Tensor:
    """Foreground ``> 0``; everything when there is none (an empty box cannot be cropped to)."""
    selected = image > 0
    return selected if bool(selected.any()) else torch.ones_like(selected)


def _nonzero_or_all(image: torch.Tensor) -> torch.Tensor:
    """Foreground ``!= 0``; everything when there is none."""
    selected = image != 0
    return selected if bool(selected.any()) else torch.ones_like(selected)


def foreground_crop(
    modality: str = "other",
    margin: int | Sequence[int] = 0,
    keys: Sequence[str] = ("image", "label"),
    source_key: str = "image",
) -> CropForegroundd:
    """``CropForegroundd`` to the box of the intensity-scaled image's foreground (``!= 0`` for MR, ``> 0``
    otherwise), ``margin`` voxels wider but never beyond the volume; invertible (``Invertd`` pads it back)."""
    select: Callable = _nonzero_or_all if _modality(modality) == "MR" else _positive_or_all
    return CropForegroundd(list(keys), source_key=source_key, select_fn=select, margin=margin, allow_smaller=True,
                           start_coord_key=None, end_coord_key=None, allow_missing_keys=True)


class RequestSafeSpacingd(Spacingd):
    """MONAI's ``Spacingd``, safe in a MONAI Label request: for a NIfTI input, MONAI 1.6's ``Spacingd`` updates
    every entry named ``<key>_*`` with the image's meta data, which fails on the string MONAI Label puts under
    ``image_path``. Such non-dict entries are set aside for the call and put back; the result is MONAI's."""

    def __call__(self, data: Mapping[Any, Any], lazy: bool | None = None) -> dict:
        d = dict(data)
        aside = {k: d.pop(k) for k in list(d) if isinstance(k, str) and not isinstance(d[k], Mapping)
                 and any(k.startswith(f"{key}_") for key in self.keys)}
        out = super().__call__(d, lazy=lazy)
        out.update(aside)
        return out


class VolumeSettings:
    """The preprocessing settings of a 3-D run, the target spacing resolved, and the transform they define.

    The target spacing is, in this order:

    1. ``target_spacing`` when given;
    2. in a training config (``run`` is the run's :class:`fanet_monai.run.RunOwner`): the run's recorded spacing
       when it resumes, else the median spacing of its training split (``datalist`` split by the run's
       ``val_fraction``, ``split_seed`` and ``split_mode`` settings, as ``train.json`` splits it); evaluation over
       ``train.json`` computes the same value from the same data. The settings are recorded in the run
       (``run.record``), so ``run.json`` holds the resolved spacing;
    3. otherwise (inference: ``run`` is not a run owner) the spacing in ``recorded``, the settings of the run in
       ``bundle_root`` (``fanet_monai.run.stored_settings``).

    Args:
        target_spacing: mm per voxel along each axis after reorientation, or ``None`` (see above).
        orientation: axis codes to reorient to (``"RAS"``), ``None`` to keep the stored orientation.
        modality: one of :data:`MODALITIES` (:func:`intensity_transform`).
        ct_window: the CT window ``[low, high]`` in HU.
        crop_foreground: crop to the foreground's box (:func:`foreground_crop`).
        crop_margin: voxels kept around the foreground.
        recorded: settings recorded by the run in ``bundle_root`` (``{}`` when there is none).
        datalist: the training datalist (a folder or JSON, as ``train.json`` reads it).
        run: the training run's owner, or anything else outside training.
        volume_mode: ``"3d"`` or ``"slice"`` (:mod:`fanet_monai.networks.slicewise`), recorded with the rest.
        slice_axis: the axis of the slices in ``"slice"`` mode, recorded with the rest.

    Raises:
        InputError: a bad setting, or no target spacing to be found (the message says to set ``target_spacing``).
    """

    def __init__(
        self,
        target_spacing: Sequence[float] | None = None,
        orientation: str | None = "RAS",
        modality: str = "other",
        ct_window: Sequence[float] = (-1000.0, 1000.0),
        crop_foreground: bool = True,
        crop_margin: int | Sequence[int] = 0,
        recorded: Mapping[str, Any] | None = None,
        datalist: str | os.PathLike | None = None,
        run: Any = None,
        volume_mode: str = "3d",
        slice_axis: int = 2,
    ) -> None:
        self.orientation = None if orientation is None else str(orientation).upper()
        try:
            axes = [] if self.orientation is None else nib.orientations.axcodes2ornt(tuple(self.orientation))[:, 0]
            if self.orientation is not None and (len(axes) != 3 or len(set(axes.tolist())) != 3):
                raise ValueError("not three distinct axes")
        except ValueError as error:
            raise InputError(f"orientation must be three axis codes such as 'RAS' or 'LPS', or null (keep the stored "
                             f"orientation), got {orientation!r}.") from error
        self.modality = _modality(modality)
        self.volume_mode, self.slice_axis = check_volume_mode(volume_mode), int(slice_axis)
        self.ct_window = [float(v) for v in ct_window]
        self.crop_foreground = bool(crop_foreground)
        self.crop_margin = crop_margin
        intensity_transform(self.modality, self.ct_window)  # checks the window
        self.target_spacing = self._resolve(target_spacing, dict(recorded or {}), datalist, run)
        if callable(getattr(run, "record", None)):
            run.record(settings=self.as_dict())

    def _resolve(self, spacing: Sequence[float] | None, recorded: Mapping[str, Any], datalist: Any,
                 run: Any) -> list[float]:
        if spacing is not None:
            return _checked_spacing(spacing, "target_spacing")
        stored = recorded.get("target_spacing")
        training = callable(getattr(run, "record", None))
        if training and not (getattr(run, "resume", False) and stored is not None):
            split = getattr(run, "settings", {})
            try:
                items = load_datalist(datalist, "training", split.get("val_fraction", 0.2), split.get("split_seed", 0),
                                      split.get("split_mode", "random"))
            except (OSError, ValueError) as error:
                raise InputError(f"target_spacing is null and the training datalist {datalist} cannot be read to "
                                 f"compute the median spacing ({error}); set target_spacing.") from error
            value = median_spacing([item["image"] for item in items], self.orientation)
            logger.info("target spacing: median of %d training volumes = %s mm", len(items), value)
            return value
        if stored is None:
            raise InputError("target_spacing is null and no training run in bundle_root records one: set "
                             "target_spacing (the spacing the model was trained at), or point bundle_root at the run.")
        return _checked_spacing(stored, "the run's recorded target_spacing")

    def as_dict(self) -> dict[str, Any]:
        """The settings as recorded in ``run.json`` (plain JSON values, the spacing resolved)."""
        return {
            "volume_mode": self.volume_mode,
            "slice_axis": self.slice_axis,
            "orientation": self.orientation,
            "target_spacing": self.target_spacing,
            "modality": self.modality,
            "ct_window": self.ct_window,
            "crop_foreground": self.crop_foreground,
            "crop_margin": self.crop_margin,
        }

    def transform(self, image_key: str = "image", label_key: str = "label") -> Compose:
        """Orientation, spacing, intensity and foreground crop of ``image_key`` and, when the sample has one, of
        ``label_key`` (nearest interpolation), as one ``Compose`` to place in a preprocessing list."""
        keys = [image_key, label_key]
        steps: list = []
        if self.orientation is not None:
            steps.append(Orientationd(keys, axcodes=self.orientation, labels=_RAS_LABELS, allow_missing_keys=True))
        steps.append(RequestSafeSpacingd(keys, pixdim=self.target_spacing, mode=["bilinear", "nearest"],
                                         allow_missing_keys=True))
        steps.append(intensity_transform(self.modality, self.ct_window, image_key))
        if self.crop_foreground:
            steps.append(foreground_crop(self.modality, self.crop_margin, keys, source_key=image_key))
        return Compose(steps)

    def cache_key(self) -> str:
        """A short digest of the settings: preprocessed volumes cached on disk under other settings are not reused."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]
