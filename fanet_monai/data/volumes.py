"""Volume datasets as MONAI users bring them: a folder of 3-D NIfTI, NRRD or MetaImage files (``images/`` +
``labels/`` or ``masks/``, paired by file name) or a datalist JSON (``prepare msd``), checked before training.

The 2-D checks (:mod:`fanet_monai.data.checks`) read whole bitmaps; these read **headers** first
(:mod:`fanet_monai.data.volume_headers`) and voxels only where a check needs values:

- images: the header, plus the last voxel of a NIfTI file (``dataobj[-1, -1, -1]``): a truncated ``.nii.gz``
  whose header reads fails there, at the cost of decompressing the stream but allocating nothing. NRRD and
  MetaImage images are not decompressed here (ITK cannot read part of a compressed stream): a corrupt one fails
  when the bundle loads it;
- labels: all voxels (class codes), so a corrupt label fails here.

Refused (:class:`~fanet_monai.data.files.DataCheckError`, one line per problem, each naming its file and what to do):
a missing or unreadable file; an empty volume (a zero-size dimension); a 2-D image in a volume dataset (a bitmap,
or a volume file with fewer than three dimensions larger than one, e.g. a NIfTI ``64x64x1`` slice: a volume one
voxel thick is a slice whichever axis it lies on); a 4-D image (multi-channel MR) unless ``channels`` declares that
many channels, and an image whose channels differ from the declared number; image and label of different shapes
or affines (spacing, origin or direction beyond ``affine_tolerance``); label values outside ``0..num_classes``,
fractional or NaN label values, a multi-channel label; a volume whose refinement would not fit in the available
memory (:func:`fanet_monai.data.inputs.check_memory`); duplicate names or an image in training and in another split
(:func:`fanet_monai.data.checks.check_unique_names`).

Noted, not refused (the report's ``note:`` lines name the files): all-zero labels (negative examples), float
labels with integral values (cast when loaded), binary labels stored as ``0/v`` (``num_classes=1``: thresholded at
the midpoint, as :class:`~fanet_monai.data.transforms.BinarizeLabeld` does), strong anisotropy (largest / smallest
spacing above ``anisotropy``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist

from fanet_monai.data.checks import check_unique_names
from fanet_monai.data.datalist import split_items
from fanet_monai.data.discovery import child_folder, pair_by_stem
from fanet_monai.data.files import (
    BITMAP_SUFFIXES,
    VOLUME_SUFFIXES,
    DataCheckError,
    file_suffix,
    image_files,
    raise_problems,
)
from fanet_monai.data.inputs import check_memory
from fanet_monai.data.volume_headers import (
    VolumeHeader,
    is_volume_file,
    read_label_voxels,
    read_last_voxel,
    read_volume_header,
)
from fanet_monai.data.volume_report import VolumeInfo, VolumeReport

__all__ = [
    "VolumeInfo",
    "VolumeReport",
    "check_volume_datalist",
    "check_volume_items",
    "is_volume_file",
    "is_volume_folder",
    "load_volume_datalist",
    "volume_folder_datalist",
]

logger = logging.getLogger(__name__)

#: image and label affines agree when spacing (relative), origin (mm) and direction cosines differ by less
AFFINE_TOLERANCE = 1e-3
#: largest / smallest spacing above which a volume is noted as anisotropic
ANISOTROPY = 3.0
#: sub-folder names of a volume folder
LABEL_FOLDERS = ("labels", "masks")
#: files named per note in the report
NOTE_EXAMPLES = 5
_NOTES = {  # kind → (what, why it is kept)
    "empty": ("all-zero labels", "no foreground; kept as negative examples, not an error"),
    "float": ("float labels with integral values", "cast to integer class codes when loaded"),
    "levels": ("binary labels stored as 0/v, not 0/1", "thresholded at the midpoint, as the bundle does"),
    "anisotropic": (f"strongly anisotropic volumes (largest / smallest spacing > {ANISOTROPY:g})",
                    "kept; consider resampling to a common spacing or an anisotropic patch size"),
}


# -- folders and datalists --------------------------------------------------------------------------------------------
def _folders(root: Path) -> tuple[Path | None, Path | None]:
    return child_folder(root, ["images"]), child_folder(root, LABEL_FOLDERS)


def is_volume_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds ``images/`` and ``labels/`` (or ``masks/``) of volumes: an NRRD or MetaImage file in
    ``images/``, or a NIfTI file there whose header has three dimensions larger than 4 (a third dimension of at
    most 4 is a 2-D gray, RGB or RGBA image's channel axis to the 2-D reader). Reads one header at most."""
    images, labels = _folders(Path(root))
    if images is None or labels is None:
        return False
    files = image_files(images, suffixes=VOLUME_SUFFIXES)
    if not files:
        return False
    if any(file_suffix(p) in (".nrrd", ".mha") for p in files.values()):
        return True
    try:
        dims = read_volume_header(next(iter(files.values()))).dims
    except DataCheckError:
        return True  # the checks will name the file
    return len(dims) == 3 and min(dims) > 4


def volume_folder_datalist(
    root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0, split_mode: str = "random"
) -> dict[str, list[dict]]:
    """``root/images/*`` + ``root/labels/*`` (or ``masks/``) matched by file stem (``a.nii.gz`` ↔ ``a.nrrd`` too)
    → ``{"training", "validation"}`` lists of ``{"image", "label"}`` (absolute paths), split by
    :func:`~fanet_monai.data.datalist.split_items` over the sorted stems, as
    :func:`~fanet_monai.data.datalist.folder_datalist` does for bitmaps. Bitmaps in these folders are listed too,
    so that :func:`check_volume_items` names them.

    Raises:
        DataCheckError: naming the folder or file: a missing folder, no volumes, an unpaired file, duplicate stems.
    """
    root = Path(root)
    image_dir, label_dir = _folders(root)
    if image_dir is None or label_dir is None:
        raise DataCheckError(f"{root}: expected images/ and labels/ (or masks/) sub-folders of volumes.")
    suffixes = VOLUME_SUFFIXES + BITMAP_SUFFIXES
    images, labels = image_files(image_dir, suffixes=suffixes), image_files(label_dir, suffixes=suffixes)
    if not images:
        raise DataCheckError(f"{image_dir}: no volumes found (suffixes {', '.join(VOLUME_SUFFIXES)}).")
    items = pair_by_stem(images, labels, lambda s: s, image_dir, label_dir)
    return split_items(items, val_fraction, seed, split_mode)


def load_volume_datalist(
    source: str | os.PathLike, split: str = "training", val_fraction: float = 0.2, seed: int = 0,
    split_mode: str = "random",
) -> list[dict]:
    """The ``split`` list from a volume folder (:func:`volume_folder_datalist`) or a datalist JSON (MONAI's
    Decathlon loader; an empty list stays empty)."""
    path = Path(source)
    if path.is_dir():
        lists = volume_folder_datalist(path, val_fraction, seed, split_mode)
        if split not in lists:
            raise DataCheckError(f"{path}: a folder gives 'training' and 'validation' lists, not {split!r}.")
        return lists[split]
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataCheckError(f"{path}: neither a volume folder nor a readable datalist JSON ({error}).") from error
    if not isinstance(content, dict) or split not in content:
        raise DataCheckError(f"{path}: the datalist has no {split!r} list.")
    return load_decathlon_datalist(str(path), True, split) if content[split] else []


# -- one item ---------------------------------------------------------------------------------------------------------
def _volume_header(path: str, what: str) -> VolumeHeader:
    """The header of an image or label, refused (naming the file) when it is not a usable 3-D volume."""
    if file_suffix(path) in BITMAP_SUFFIXES:
        raise DataCheckError(f"{path}: a 2-D {file_suffix(path)} {what} in a volume dataset; convert it to a volume "
                             f"({', '.join(VOLUME_SUFFIXES)}) or remove it.")
    header = read_volume_header(path)
    if 0 in header.dims or header.channels == 0:
        raise DataCheckError(f"{path}: empty {what} (shape {header.shape}, a zero-size dimension); export it again "
                             "or remove it from the dataset.")
    if len(header.dims) < 3 or min(header.dims) == 1:
        raise DataCheckError(f"{path}: a 2-D {what} (shape {header.shape}) in a volume dataset; give a volume with "
                             "three dimensions larger than 1, or train it with the 2-D images.")
    return header


def _check_channels(header: VolumeHeader, channels: int | None) -> list[str]:
    if channels is None and header.channels > 1:
        return [(f"{header.path}: 4-D image ({header.shape}: {header.channels} channels, e.g. multi-parametric MR) "
                f"but no channels were declared; declare them (image_channels={header.channels}; prepare msd "
                "reads them from dataset.json 'modality'), or give 3-D volumes.")]
    if channels is not None and header.channels != channels:
        return [(f"{header.path}: {header.channels} image channel(s) (shape {header.shape}) but the dataset declares "
                f"{channels}; fix the image or the declared channels (image_channels).")]
    return []


def _affine_differences(image: VolumeHeader, label: VolumeHeader, tolerance: float) -> list[str]:
    """Which of spacing, origin and direction differ between the two headers (empty when they agree)."""
    a, b = np.maximum(image.spacing, 1e-12), np.maximum(label.spacing, 1e-12)  # (3,) mm; a degenerate axis stays 0
    found = []
    if not np.allclose(a, b, rtol=tolerance, atol=0):
        found.append(f"spacing {_fmt(b)} vs the image's {_fmt(a)}")
    if not np.allclose(image.affine[:3, 3], label.affine[:3, 3], atol=tolerance, rtol=0):
        found.append(f"origin {_fmt(label.affine[:3, 3])} vs {_fmt(image.affine[:3, 3])}")
    if not np.allclose(image.affine[:3, :3] / a, label.affine[:3, :3] / b, atol=tolerance, rtol=0):
        found.append("direction (orientation) differs")
    return found


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _label_values(path: str, num_classes: int, notes: dict[str, list[str]]) -> tuple[tuple[int, ...], list[str]]:
    """The class codes of a label and its problems; notes empty, float and 0/v labels into ``notes``."""
    voxels = read_label_voxels(path)
    values = np.unique(voxels)
    if voxels.dtype.kind == "f":
        bad = values[~np.isfinite(values) | (values != np.round(values))]
        if bad.size:
            return (), [(f"{path}: fractional label values ({_shown(bad)}) in a {voxels.dtype} label; labels hold "
                        "integer class codes 0..K: round or threshold it (a resampled or probability map?).")]
        notes["float"].append(path)
    codes = tuple(int(v) for v in values)
    if codes == (0,):
        notes["empty"].append(path)
    if num_classes == 1 and len(codes) == 2 and codes[0] == 0 and codes[1] > 0:
        if codes[1] != 1:
            notes["levels"].append(f"{path} (0/{codes[1]})")
        return codes, []
    outside = [c for c in codes if not 0 <= c <= num_classes]
    if outside:
        hint = (" (a multi-class label map? declare num_classes=K)" if num_classes == 1 else "")
        return codes, [(f"{path}: label values {_shown(codes)}; {_shown(outside)} outside the declared classes "
                       f"0..{num_classes}{hint}: fix the label or declare the classes (num_classes; prepare msd "
                       "reads them from dataset.json 'labels').")]
    return codes, []


def _shown(values: Sequence, limit: int = 8) -> str:
    listed = ", ".join(f"{float(v):g}" for v in list(values)[:limit])
    return listed + (", ..." if len(values) > limit else "")


def _check_item(item: Mapping[str, str], image_key: str, label_key: str | None, num_classes: int,
                channels: int | None, tolerance: float, memory: bool,
                notes: dict[str, list[str]]) -> tuple[VolumeInfo | None, list[str]]:
    """Check one ``{"image"[, "label"]}`` item; returns its info (``None`` when unusable) and its problems."""
    image_path = str(item[image_key])
    try:
        image = _volume_header(image_path, "image")
        problems = _check_channels(image, channels)
        read_last_voxel(image_path)
        if memory:
            check_memory(image_path, image.dims, image.channels)
    except DataCheckError as error:
        return None, [str(error)]
    info = VolumeInfo(image_path, image.dims, image.channels, image.spacing, image.dtype)
    if max(info.spacing) > ANISOTROPY * min(info.spacing):
        notes["anisotropic"].append(f"{image_path} {_fmt(info.spacing)} mm")
    if label_key is None or label_key not in item:
        return info, problems
    label_path = str(item[label_key])
    try:
        label = _volume_header(label_path, "label")
        if label.channels != 1:
            problems.append(f"{label_path}: a label with {label.channels} channels (shape {label.shape}); give one "
                            "label map of class codes 0..K (not one-hot).")
        if label.dims != image.dims:
            problems.append(f"{label_path}: label shape {label.shape} differs from its image {image_path} "
                            f"({image.shape}); the label must be on the image's voxel grid (re-export it, or "
                            "resample it with MONAI's ResampleToMatchd).")
        differences = _affine_differences(image, label, tolerance)
        if differences:
            problems.append(f"{label_path}: label affine differs from its image {image_path}: "
                            f"{'; '.join(differences)} (tolerance {tolerance:g}); fix the header or resample the "
                            "label onto the image grid.")
        info.label_dtype = label.dtype
        info.classes, value_problems = _label_values(label_path, num_classes, notes)
        problems += value_problems
    except DataCheckError as error:
        problems.append(str(error))
    return info, problems


def _note_lines(notes: Mapping[str, list[str]]) -> list[str]:
    lines = []
    for kind, files in notes.items():
        if files:
            shown = ", ".join(files[:NOTE_EXAMPLES]) + (", ..." if len(files) > NOTE_EXAMPLES else "")
            what, why = _NOTES[kind]
            lines.append(f"{what} ×{len(files)} ({why}): {shown}")
    return lines


# -- checking a dataset -----------------------------------------------------------------------------------------------
def check_volume_items(
    items: Sequence[Mapping[str, str]] | Mapping[str, Sequence[Mapping[str, str]]],
    num_classes: int = 1,
    channels: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
    title: str = "volumes",
    required: Sequence[str] = ("training",),
    affine_tolerance: float = AFFINE_TOLERANCE,
    memory: bool = True,
    strict: bool = True,
) -> VolumeReport:
    """Check a volume dataset (see the module doc) before training: every file once, headers first.

    Args:
        items: ``{split: [{"image", "label"}]}``, or one list (the ``training`` split). Items without a label
            (a Decathlon test list) have their image checked only.
        num_classes: foreground classes K (labels hold 0..K); 1 = binary (0/1, or 0/v noted).
        channels: image channels the dataset declares (e.g. the Decathlon ``modality`` count); ``None`` = not
            declared: 3-D images only, a 4-D image is refused.
        image_key, label_key: the datalist keys.
        title: the report's title (e.g. the datalist or folder).
        required: splits that must not be empty.
        affine_tolerance: relative for spacing, mm for origin, absolute for direction cosines.
        memory: refuse a volume whose refinement would not fit in the memory available now.
        strict: raise on problems (else return them in ``report.problems``).

    Returns:
        a :class:`VolumeReport` (``report.text()`` for the log).

    Raises:
        DataCheckError: with ``strict``, one line per problem, each naming its file.
    """
    splits = {"training": list(items)} if not isinstance(items, Mapping) else dict(items)
    raise_problems([f"{title}: the {name!r} list is empty (no volumes found)." for name in required
                    if not splits.get(name)])
    check_unique_names(splits, image_key)
    notes: dict[str, list[str]] = defaultdict(list)
    seen: dict[tuple[str, str], VolumeInfo | None] = {}
    report, problems = VolumeReport(title=title), []
    for split, entries in splits.items():
        report.splits[split] = []
        for index, item in enumerate(entries):
            if image_key not in item:
                problems.append(f"{title}: {split} item {index} has no {image_key!r} entry: {dict(item)}.")
                continue
            if split != "test" and label_key not in item:
                problems.append(f"{item[image_key]}: image has no {label_key!r} entry in the {split} list.")
            signature = (str(item[image_key]), str(item.get(label_key)))
            if signature not in seen:
                seen[signature], found = _check_item(item, image_key, label_key, num_classes, channels,
                                                     affine_tolerance, memory, notes)
                problems += found
            if seen[signature] is not None:
                report.splits[split].append(seen[signature])
    report.notes = _note_lines(notes)
    if strict:
        raise_problems(problems)
    report.problems = problems
    return report


def check_volume_datalist(
    source: str | os.PathLike,
    splits: Iterable[str] = ("training", "validation"),
    val_fraction: float = 0.2,
    seed: int = 0,
    split_mode: str = "random",
    num_classes: int = 1,
    channels: int | None = None,
    log: bool = True,
) -> VolumeReport:
    """Check the lists a volume bundle will train on (a volume folder or a datalist JSON, as ``train.json``'s
    ``datalist``), the volume counterpart of :func:`fanet_monai.data.checks.check_datalist`; raises
    :class:`DataCheckError` naming the file."""
    lists = {split: load_volume_datalist(source, split, val_fraction, seed, split_mode) for split in splits}
    required = ["training"] if "training" in lists else list(lists)
    report = check_volume_items(lists, num_classes, channels, title=str(source), required=required)
    if log:
        logger.info("volume data check passed:\n%s", report.text())
    return report
