"""CT/MR DICOM series as volumes: grouped, sorted and checked the way a radiology pipeline must (issue 21).

:func:`find_series` groups the DICOM files under a folder (recursive) by Series Instance UID; :func:`read_series`
makes one volume of a series:

- single-frame instances sorted **along the slice normal** (the cross product of Image Orientation (Patient)'s row
  and column cosines) by the projection of Image Position (Patient); the slice spacing is the median step between
  those projections (never Slice Thickness, which is often not the spacing);
- the stored values through Rescale Slope/Intercept (Hounsfield units for CT), float32;
- the grid as a NIfTI-style **RAS affine** (DICOM's patient coordinates are LPS) and the array as ``(X, Y, Z)`` =
  (column, row, slice) index order, so it saves as NIfTI and compares with a label volume by its affine.

Refused, one line naming the series and the instance (:class:`SeriesError`; other series go on): a non-image object
(SEG, SR, RTSTRUCT, ...) or an undecodable transfer syntax (:func:`fanet_monai.dicom.reader.check_source`); a
localizer (Image Type ``LOCALIZER``) or an instance of another orientation mixed in; a gap (a step over 1.5 times
the median: a missing slice, named by the instances around it); unequal spacing beyond ``spacing_tolerance``;
gantry tilt (slices not stacked along their normal: refused, not resampled — resampling would need an oblique grid
the mask could not be written back to); a series of one slice (a 2-D image: the instance pipeline segments it);
instances of unequal size; a truncated instance anywhere in the series; a series whose refinement would not fit in
the available memory (estimated from the headers, before any pixel is decoded).

Rough anonymisation is repaired and said (:attr:`SeriesVolume.notes`): an empty SOP Instance UID or SOP Class UID is
taken from the file meta information; empty Study/Series Instance UIDs are generated deterministically from the
Frame of Reference UID and the folder (so a re-run gets the same ones), so the SEG can reference the instances.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from fanet_monai.data.inputs import check_memory
from fanet_monai.dicom.reader import SourceError, check_source, decode_frame, looks_like_dicom, read_header
from fanet_monai.errors import InputError

__all__ = ["SeriesError", "SeriesVolume", "find_series", "read_series"]

#: a step between slices more than this times the median step is a missing slice
GAP_FACTOR = 1.5


class SeriesError(InputError):
    """A series that cannot become one volume; ``str()`` is one line: the series, the instance and the reason."""


@dataclass
class SeriesVolume:
    """One series as a volume: ``array`` ``(X, Y, Z)`` float32 (rescaled), ``affine`` RAS 4x4 (mm), the instances
    in slice order (``datasets``, their files) and what was repaired or noted."""

    series_uid: str
    array: np.ndarray
    affine: np.ndarray
    datasets: list[Dataset]
    files: list[Path]
    notes: list[str] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along X, Y, Z."""
        return tuple(float(np.linalg.norm(self.affine[:3, k])) for k in range(3))


def _repair(ds: Dataset, path: Path, notes: list[str]) -> None:
    """Fill empty SOP Instance/Class UIDs from the file meta and empty Study/Series UIDs deterministically."""
    meta = getattr(ds, "file_meta", Dataset())
    for keyword, source in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                            ("SOPClassUID", "MediaStorageSOPClassUID")):
        if not str(ds.get(keyword, "") or "") and str(meta.get(source, "") or ""):
            setattr(ds, keyword, str(meta.get(source)))
            notes.append(f"{keyword} taken from the file meta information")
    frame = str(ds.get("FrameOfReferenceUID", "") or "")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not str(ds.get(keyword, "") or ""):
            setattr(ds, keyword, generate_uid(entropy_srcs=["fanet-repaired", keyword, frame, str(path.parent)]))
            notes.append(f"{keyword} generated (empty in the files)")


def find_series(root: str | os.PathLike) -> dict[str, list[tuple[Path, Dataset]]]:
    """The DICOM files under ``root`` (a file or a folder, recursive) grouped by Series Instance UID (repaired ones
    by their generated UID), headers only. Unreadable files raise :class:`~fanet_monai.dicom.reader.SourceError`."""
    root = Path(root)
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and looks_like_dicom(p))
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in paths:
        ds = read_header(path)
        notes: list[str] = []
        _repair(ds, path, notes)
        ds.fanet_notes = notes  # a plain attribute, not a data element
        series[str(ds.SeriesInstanceUID)].append((path, ds))
    return dict(series)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def read_series(instances: list[tuple[Path, Dataset]], spacing_tolerance: float = 0.01,
                orientation_tolerance: float = 1e-3) -> SeriesVolume:
    """One volume from the instances of a series (:func:`find_series`); see the module doc for the checks.

    Raises:
        SeriesError: naming the series and the instance, one line.
    """
    series_uid = str(instances[0][1].SeriesInstanceUID)

    def fail(reason: str, path: Path | None = None, ds: Dataset | None = None) -> SeriesError:
        where = f"series {series_uid}" + (f", {path}" if path else "") + (
            f" (SOP Instance UID {ds.SOPInstanceUID})" if ds is not None and ds.get("SOPInstanceUID") else "")
        return SeriesError(f"{where}: {reason}")

    for path, ds in instances:
        try:
            check_source(ds, path)
        except SourceError as error:
            raise fail(error.reason, path, ds) from error
        if "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]:
            raise fail("a localizer (Image Type LOCALIZER) mixed into the series; remove it", path, ds)
        if int(ds.get("NumberOfFrames") or 1) > 1:
            raise fail("an enhanced multi-frame instance; series of single-frame instances are read here", path, ds)
        if ds.get("ImageOrientationPatient") is None or ds.get("ImagePositionPatient") is None:
            raise fail("no Image Orientation/Position (Patient): its place in the volume is unknown", path, ds)
    if len(instances) < 2:
        raise fail("a series of one slice is a 2-D image, not a volume; segment it with the instance pipeline",
                   *instances[0])
    cosines = [np.asarray(ds.ImageOrientationPatient, dtype=float) for _, ds in instances]
    # the series' orientation is the one most instances share; the others are named
    first = max(cosines, key=lambda c: sum(np.abs(o - c).max() <= orientation_tolerance for o in cosines))
    for path, ds in instances:
        if np.abs(np.asarray(ds.ImageOrientationPatient, dtype=float) - first).max() > orientation_tolerance:
            raise fail(f"orientation {list(ds.ImageOrientationPatient)} differs from the series' "
                       f"{first.tolist()} (another series or a localizer mixed in); remove it", path, ds)
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in instances}
    if len(shapes) > 1:
        raise fail(f"instances of different sizes {sorted(shapes)}")
    row, col = _unit(first[:3]), _unit(first[3:])
    normal = np.cross(row, col)
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in instances])
    order = np.argsort(positions @ normal)
    instances = [instances[i] for i in order]
    positions = positions[order]
    along = positions @ normal
    steps = np.diff(along)
    if np.any(steps <= 1e-6):
        k = int(np.argmax(steps <= 1e-6))
        raise fail(f"two instances at the same position ({instances[k][0].name}, {instances[k + 1][0].name}); "
                   "a duplicate or another series mixed in", *instances[k + 1])
    median = float(np.median(steps))
    for k, step in enumerate(steps):
        if step > GAP_FACTOR * median:
            raise fail(f"a gap of {step:.2f} mm after {instances[k][0].name} (slices are {median:.2f} mm apart): a "
                       "missing slice; re-send the whole series", *instances[k + 1])
    if np.abs(steps - median).max() > spacing_tolerance * median:
        k = int(np.argmax(np.abs(steps - median)))
        raise fail(f"unequal slice spacing ({steps.min():.3f}-{steps.max():.3f} mm, tolerance "
                   f"{spacing_tolerance:.0%} of {median:.3f})", *instances[k + 1])
    offsets = positions - positions[0]
    sideways = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1).max()
    if sideways > 0.01 * median * len(instances):
        raise fail(f"gantry tilt: slices shift {sideways:.2f} mm sideways along the stack (not stacked along their "
                   "normal); tilted series are refused, not resampled: reconstruct it without tilt")
    pixel = [float(v) for v in instances[0][1].PixelSpacing]  # (row spacing, column spacing)
    rows, columns = shapes.pop()
    try:  # before any pixel is decoded
        check_memory(f"series {series_uid}", (columns, rows, len(instances)), 1)
    except InputError as error:
        raise SeriesError(str(error)) from error
    slices = []
    for path, ds in instances:
        try:
            values = decode_frame(ds).astype(np.float32)
        except SourceError as error:
            raise fail(error.reason, path, ds) from error
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        slices.append(values * slope + intercept)
    array = np.stack([s.T for s in slices], axis=-1)  # (columns, rows, slices) = (X, Y, Z)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * pixel[1], col * pixel[0], normal * median
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    notes = sorted({n for _, ds in instances for n in getattr(ds, "fanet_notes", [])})
    return SeriesVolume(series_uid, array, affine, [ds for _, ds in instances], [p for p, _ in instances], notes)
