"""Validation of a segmentation dataset before anything is written or trained: every error names the file.

Used by :func:`fanet_monai.data.layouts.prepare` (before ``OUT.json`` is written) and by the training bundle (the
``check_data`` step of ``train.json``'s ``initialize``, before the trainer, the checkpoint directory or the log
directory exist).

Errors (:class:`DataCheckError`, a ``ValueError``):

- a file that does not exist, cannot be decoded, or is truncated;
- an image without a mask, a mask without an image (pairing by file stem, in the layouts);
- image and mask (or FOV mask) of different sizes;
- a mask with more than two grey levels that thresholding cannot explain (a multi-class label map, a grayscale
  picture given as mask);
- an empty dataset (no training item);
- duplicate stems (``a.png`` and ``a.jpg``), the same file name in two folders (the feedback cache keys samples by
  file name) and the same image in training and validation/test.

JPEG-noisy masks (levels near 0 and near the maximum, plus a few in between from compression) are accepted and
thresholded at half the nominal range (``> 127`` for 8-bit); a warning counts the pixels thresholding changed.

The binarization rule (:func:`binary_threshold`) is the one :class:`~fanet_monai.data.transforms.BinarizeLabeld` applies
in the bundle, so what is checked is what is trained on.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import itk
import nibabel as nib
import numpy as np

from fanet_monai.data.files import (
    BITMAP_SUFFIXES,
    NIFTI_SUFFIXES,
    DataCheckError,
    file_stem,
    file_suffix,
    raise_problems,
)
from fanet_monai.data.datalist import load_datalist
from fanet_monai.data.readers import read_bitmap

__all__ = [
    "DataCheckError",
    "DataReport",
    "ItemInfo",
    "binarize_mask",
    "binary_threshold",
    "check_datalist",
    "check_items",
    "check_unique_names",
    "mask_to_gray",
    "nominal_range",
    "read_array",
]

logger = logging.getLogger(__name__)

#: fraction of pixels far from both mask levels (between 25 % and 75 % of the range) above which a multi-level mask
#: is not accepted as a noisy binary mask
MAX_AMBIGUOUS_FRACTION = 0.1


# -- reading ----------------------------------------------------------------------------------------------------------
def read_array(path: str | os.PathLike) -> np.ndarray:
    """Pixels of a 2-D image or mask file, ``(H, W)`` or ``(H, W, C)``, native dtype (PIL for bitmaps, ITK for
    TIFFs PIL cannot read, nibabel for NIfTI). Raises :class:`DataCheckError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataCheckError(f"{path}: file not found.")
    suffix = file_suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:

            array = np.asanyarray(nib.load(str(path)).dataobj)
            while array.ndim > 2 and array.shape[-1] == 1:
                array = array[..., 0]
            if array.ndim == 3 and array.shape[-1] <= 4:
                array = np.moveaxis(array, 0, 1)  # NIfTI (x, y, c) → (rows, cols, c), as the bundle sees it
            elif array.ndim == 2:
                array = array.T
            else:
                raise DataCheckError(f"{path}: expected a 2-D image, got array shape {array.shape}.")
            return np.ascontiguousarray(array)
        if suffix not in BITMAP_SUFFIXES:
            raise DataCheckError(f"{path}: unsupported file type {suffix!r}.")
        try:
            return read_bitmap(path)
        except Exception as pil_error:  # noqa: BLE001 - any decoder failure is "unreadable"
            if suffix in (".tif", ".tiff"):
                try:
                    return _read_with_itk(path)
                except Exception:  # noqa: BLE001
                    pass
            raise pil_error
    except DataCheckError:
        raise
    except Exception as error:  # noqa: BLE001
        raise DataCheckError(f"{path}: unreadable or truncated image ({type(error).__name__}: {error}).") from error


def _read_with_itk(path: Path) -> np.ndarray:
    return np.asarray(itk.array_from_image(itk.imread(str(path))))


def mask_to_gray(mask: np.ndarray) -> np.ndarray:
    """Single-channel view of a mask ``(H, W[, C])``: gray as is, gray+alpha → gray, RGB(A) → max over R, G, B
    (a coloured object on black counts as foreground whatever its colour; the alpha channel is ignored)."""
    if mask.ndim == 2:
        return mask
    channels = mask.shape[-1]
    if channels in (1, 2):
        return mask[..., 0]
    return mask[..., :3].max(axis=-1)


def nominal_range(max_value: float) -> float:
    """Full-scale value of a mask from its maximum: 1 (float masks), 255 (8-bit), 65535 (16-bit), else the max."""
    if max_value <= 1:
        return 1.0
    if max_value <= 255:
        return 255.0
    if max_value <= 65535:
        return 65535.0
    return float(max_value)


def binary_threshold(low: float, high: float, n_levels: int) -> float:
    """Foreground is ``value > threshold`` for a mask with ``n_levels`` distinct values from ``low`` to ``high``.

    One level: ``0`` (an all-zero mask is empty, any other constant mask is full). Two levels: their midpoint
    (0/1, 0/255, 0/38 from a palette colour all work). More (JPEG noise): half the nominal range
    (:func:`nominal_range`), i.e. ``> 127`` for 8-bit masks, ``> 0.5`` for float masks in [0, 1].
    """
    if n_levels <= 1:
        return 0.0
    if n_levels == 2:
        return (float(low) + float(high)) / 2
    full = nominal_range(float(high))
    return full / 2 - 0.5 if full > 1 else full / 2


def binarize_mask(
    mask: np.ndarray, path: str | os.PathLike = "mask", max_ambiguous: float = MAX_AMBIGUOUS_FRACTION
) -> Tuple[np.ndarray, int]:
    """``(foreground bool (H, W), number of pixels thresholding changed)`` of a mask array.

    Raises :class:`DataCheckError` naming ``path`` when the mask has more than two levels that thresholding cannot
    explain: more than ``max_ambiguous`` of its pixels lie between 25 % and 75 % of the nominal range (a grayscale
    picture, or evenly spread class labels), or no pixel lies above half the range (a label map 0, 1, 2, ...).
    """
    gray = mask_to_gray(np.asarray(mask))
    if gray.dtype == bool:
        return gray.copy(), 0
    levels = np.unique(gray)
    threshold = binary_threshold(levels[0], levels[-1], len(levels)) if len(levels) else 0.0
    foreground = gray > threshold
    if len(levels) <= 2:
        return foreground, 0
    full = nominal_range(float(levels[-1]))
    shown = ", ".join(f"{v:g}" for v in levels[:8]) + (", ..." if len(levels) > 8 else "")
    if not foreground.any():
        raise DataCheckError(
            f"{path}: mask has {len(levels)} levels ({shown}) and none above {threshold:g}: thresholding cannot make "
            "it binary (a multi-class label map? give one binary mask per image, foreground = the high level)."
        )
    values = gray.astype(np.float64)
    ambiguous = float(((values > 0.25 * full) & (values < 0.75 * full)).mean())
    if ambiguous > max_ambiguous:
        raise DataCheckError(
            f"{path}: mask has {len(levels)} levels ({shown}); {ambiguous:.0%} of its pixels are far from both "
            f"0 and {full:g}, which thresholding cannot explain (a grayscale picture or a multi-class label map?)."
        )
    changed = int(np.count_nonzero((values != 0) & (values != full)))
    return foreground, changed


# -- checking items ---------------------------------------------------------------------------------------------------
@dataclass
class ItemInfo:
    """What the check learned about one ``{"image", "label", ...}`` item."""

    image: str
    size: Tuple[int, int]
    channels: int
    dtype: str
    foreground: float
    changed_pixels: int = 0
    levels: int = 2


@dataclass
class DataReport:
    """Summary of a checked dataset: counts per split, sizes, foreground fraction, problems (warnings)."""

    splits: Dict[str, List[ItemInfo]] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    title: str = "dataset"

    @property
    def counts(self) -> Dict[str, int]:
        return {name: len(items) for name, items in self.splits.items()}

    def text(self) -> str:
        lines = [f"== {self.title} =="]
        lines.append("counts: " + ", ".join(f"{name} {n}" for name, n in self.counts.items()))
        unique = {info.image: info for items in self.splits.values() for info in items}.values()
        if unique:
            sizes = Counter(info.size for info in unique)
            common = ", ".join(f"{h}x{w} ×{n}" for (h, w), n in sizes.most_common(4))
            more = f" (+{len(sizes) - 4} other sizes)" if len(sizes) > 4 else ""
            heights = [s[0] for s in sizes]
            widths = [s[1] for s in sizes]
            lines.append(f"sizes (HxW): {common}{more}; H {min(heights)}-{max(heights)}, W {min(widths)}-{max(widths)}")
            kinds = Counter(f"{info.channels}ch {info.dtype}" for info in unique)
            lines.append("images: " + ", ".join(f"{k} ×{n}" for k, n in kinds.most_common()))
        for name, items in self.splits.items():
            if items:
                fg = np.array([info.foreground for info in items])
                empty = int((fg == 0).sum())
                lines.append(
                    f"foreground {name}: mean {fg.mean():.3f}, min {fg.min():.3f}, max {fg.max():.3f}"
                    + (f", {empty} empty masks" if empty else "")
                )
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"problem: {p}" for p in self.problems] or ["problems: none"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def check_unique_names(splits: Mapping[str, Sequence[Mapping[str, str]]], key: str = "image") -> None:
    """Raise :class:`DataCheckError` naming the files for duplicate stems or base names among the distinct image
    files of all splits, and for an image that is in ``training`` and also in another split. (The same entries in
    ``validation`` and ``test``, as for datasets whose validation list is their test list, are fine.)"""
    errors: List[str] = []
    owners: Dict[str, List[str]] = defaultdict(list)
    for split, items in splits.items():
        for item in items:
            path = os.path.normpath(str(item[key]))
            if split not in owners[path]:
                owners[path].append(split)
    for path, splits_of in owners.items():
        if "training" in splits_of and len(splits_of) > 1:
            errors.append(f"{path}: image is in {' and '.join(splits_of)} (an image must not be trained and held out).")
    by_stem: Dict[str, List[str]] = defaultdict(list)
    for path in owners:
        by_stem[file_stem(path).lower()].append(path)
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            errors.append(
                f"{paths[1]}: duplicate stem {file_stem(paths[1])!r} (also {paths[0]}); the feedback cache and the "
                "mask pairing key samples by file name, so names must be unique."
            )
    raise_problems(errors)


def _check_item(item: Mapping[str, str], image_key: str, label_key: str, extra_keys: Sequence[str],
                num_classes: int = 1):
    image_path = str(item[image_key])
    image = read_array(image_path)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 2, 3, 4)):
        raise DataCheckError(
            f"{image_path}: expected a 2-D gray, gray+alpha, RGB or RGBA image, got array shape {image.shape}."
        )
    size = tuple(int(s) for s in image.shape[:2])
    if label_key not in item:
        raise DataCheckError(f"{image_path}: image has no {label_key!r} entry in the datalist.")
    label_path = str(item[label_key])
    label = read_array(label_path)
    if tuple(label.shape[:2]) != size:
        raise DataCheckError(
            f"{label_path}: mask size {label.shape[1]}x{label.shape[0]} (WxH) differs from its image {image_path} "
            f"({size[1]}x{size[0]})."
        )
    if num_classes > 1:  # class codes 0..K, kept as they are
        codes = np.unique(label)
        if label.ndim != 2 or not np.isin(codes, np.arange(num_classes + 1)).all():
            raise DataCheckError(f"{label_path}: label values {codes[:8].tolist()} (shape {label.shape}) are not the "
                                 f"declared classes 0..{num_classes}; fix the label or --num_classes.")
        foreground, changed, levels = label > 0, 0, len(codes)
    else:
        foreground, changed = binarize_mask(label, label_path)
        levels = int(len(np.unique(mask_to_gray(label)))) if changed else 2
    for key in extra_keys:
        if key not in item:
            continue
        extra_path = str(item[key])
        extra = read_array(extra_path)
        if tuple(extra.shape[:2]) != size:
            raise DataCheckError(
                f"{extra_path}: {key} mask size {extra.shape[1]}x{extra.shape[0]} (WxH) differs from its image "
                f"{image_path} ({size[1]}x{size[0]})."
            )
        binarize_mask(extra, extra_path)
    channels = 1 if image.ndim == 2 else int(image.shape[-1])
    return ItemInfo(image_path, size, channels, str(image.dtype), float(foreground.mean()), changed, levels)


def check_items(
    splits: Mapping[str, Sequence[Mapping[str, str]]],
    image_key: str = "image",
    label_key: str = "label",
    extra_keys: Sequence[str] = ("fov",),
    title: str = "dataset",
    required: Sequence[str] = ("training",),
    num_classes: int = 1,
) -> DataReport:
    """Read and check every item of ``{split: [{"image", "label", ...}]}`` (each file once).

    Raises :class:`DataCheckError` listing every problem found (each naming its file): see the module doc. Returns
    a :class:`DataReport`; JPEG-noisy masks add a problem line and a ``UserWarning`` counting the changed pixels.
    """
    errors: List[str] = []
    for name in required:
        if not splits.get(name):
            errors.append(f"{title}: the {name!r} list is empty (no images found).")
    raise_problems(errors)
    check_unique_names(splits, image_key)
    seen: Dict[Tuple[str, str], ItemInfo] = {}
    report = DataReport(title=title)
    for split, items in splits.items():
        infos: List[ItemInfo] = []
        for index, item in enumerate(items):
            if image_key not in item:
                errors.append(f"{title}: {split} item {index} has no {image_key!r} entry: {dict(item)}.")
                continue
            signature = (str(item[image_key]), str(item.get(label_key)))
            if signature not in seen:
                try:
                    seen[signature] = _check_item(item, image_key, label_key, extra_keys, num_classes)
                except DataCheckError as error:
                    errors.append(str(error))
                    continue
            infos.append(seen[signature])
        report.splits[split] = infos
    raise_problems(errors)
    noisy = [info for info in seen.values() if info.changed_pixels]
    if noisy:
        pixels = sum(info.changed_pixels for info in noisy)
        examples = ", ".join(os.path.basename(i.image) for i in noisy[:3])
        message = (
            f"{len(noisy)} masks are not exactly two-level (JPEG noise?): thresholded at half their range "
            f"(> 127 for 8-bit), which changed {pixels} pixels (masks of e.g. {examples})."
        )
        report.problems.append(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    return report


def check_datalist(
    source: str | os.PathLike,
    splits: Iterable[str] = ("training", "validation"),
    val_fraction: float = 0.2,
    seed: int = 0,
    split_mode: str = "random",
    extra_keys: Sequence[str] = ("fov",),
    log: bool = True,
    num_classes: int = 1,
) -> DataReport:
    """Check the lists the bundle will train on (a dataset folder or a datalist JSON, as ``train.json``'s
    ``datalist``) before training starts; raises :class:`DataCheckError` naming the file."""

    lists = {}
    content = None
    if Path(source).is_file():
        try:
            content = json.loads(Path(source).read_text())
        except (OSError, ValueError) as error:
            raise DataCheckError(f"{source}: not a readable datalist JSON ({error}).") from error
    for split in splits:
        if isinstance(content, dict) and content.get(split) == []:
            lists[split] = []  # (MONAI's loader fails on an empty list with an IndexError)
            continue
        try:
            lists[split] = load_datalist(source, split, val_fraction, seed, split_mode)
        except DataCheckError:
            raise
        except Exception as error:  # noqa: BLE001 - the loaders' messages name the folder, file or JSON
            raise DataCheckError(str(error)) from error
    # training needs a training list (an empty validation list is the user's choice, val_fraction=0); evaluation
    # (no training list requested) needs the lists it evaluates
    required = ["training"] if "training" in lists else list(lists)
    report = check_items(lists, extra_keys=extra_keys, title=str(source), required=required, num_classes=num_classes)
    if log:
        logger.info("data check passed:\n%s", report.text())
    return report
