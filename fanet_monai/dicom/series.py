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
    in slice order (``datasets``, their files; an enhanced multi-frame series: its one instance and the frame of each
    slice in ``frames``) and what was repaired or noted."""

    series_uid: str
    array: np.ndarray
    affine: np.ndarray
    datasets: list[Dataset]
    files: list[Path]
    notes: list[str] = field(default_factory=list)
    #: for an enhanced multi-frame instance (``datasets`` is that one instance): the 0-based frame of each slice,
    #: in slice order; ``None`` for a series of single-frame instances (``datasets[k]`` is slice ``k``)
    frames: list[int] | None = None

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


@dataclass
class _Slice:
    """One plane of a series: a single-frame instance, or one frame of an enhanced multi-frame instance (its
    geometry and rescaling from the functional groups)."""

    path: Path
    ds: Dataset
    frame: int | None
    orientation: np.ndarray | None
    position: np.ndarray | None
    pixel_spacing: list[float] | None
    slope: float
    intercept: float

    @classmethod
    def of(cls, path: Path, ds: Dataset) -> "_Slice":
        orientation, position = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
        return cls(path, ds, None, None if orientation is None else np.asarray(orientation, dtype=float),
                   None if position is None else np.asarray(position, dtype=float),
                   [float(v) for v in ds.PixelSpacing] if ds.get("PixelSpacing") else None,
                   float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))

    @property
    def name(self) -> str:
        return self.path.name + (f" frame {self.frame + 1}" if self.frame is not None else "")

    @property
    def where(self) -> str:
        return str(self.path) + (f" frame {self.frame + 1}" if self.frame is not None else "")


def _functional(ds: Dataset, frame: int, sequence: str, keyword: str):
    """A frame's ``keyword`` from its functional group ``sequence`` (per-frame first, then shared), else the
    top-level attribute."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for groups in ([per_frame[frame]] if frame < len(per_frame) else []) + list(shared[:1]):
        items = groups.get(sequence)
        if items and items[0].get(keyword) is not None:
            return items[0].get(keyword)
    return ds.get(keyword)


def _frame_slices(path: Path, ds: Dataset) -> list[_Slice]:
    """The frames of an enhanced multi-frame CT/MR instance as slices (Plane Position/Orientation, Pixel Measures
    and Pixel Value Transformation functional groups)."""
    out = []
    for k in range(int(ds.NumberOfFrames)):
        orientation = _functional(ds, k, "PlaneOrientationSequence", "ImageOrientationPatient")
        position = _functional(ds, k, "PlanePositionSequence", "ImagePositionPatient")
        spacing = _functional(ds, k, "PixelMeasuresSequence", "PixelSpacing")
        slope = _functional(ds, k, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional(ds, k, "PixelValueTransformationSequence", "RescaleIntercept")
        out.append(_Slice(path, ds, k, None if orientation is None else np.asarray(orientation, dtype=float),
                          None if position is None else np.asarray(position, dtype=float),
                          [float(v) for v in spacing] if spacing else None,
                          float(slope if slope is not None else 1), float(intercept if intercept is not None else 0)))
    return out


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
    multi_frame = [(path, ds) for path, ds in instances if int(ds.get("NumberOfFrames") or 1) > 1]
    if multi_frame and len(instances) > 1:
        raise fail("an enhanced multi-frame instance mixed with other instances; a series is either one "
                   "multi-frame instance or single-frame instances", *multi_frame[0])
    slices = _frame_slices(*multi_frame[0]) if multi_frame else [_Slice.of(path, ds) for path, ds in instances]
    for piece in slices:
        if piece.orientation is None or piece.position is None:
            raise fail("no Image Orientation/Position (Patient): its place in the volume is unknown", piece.where,
                       piece.ds)
    if len(slices) < 2:
        raise fail("a series of one slice is a 2-D image, not a volume; segment it with the instance pipeline",
                   slices[0].where, slices[0].ds)
    cosines = [piece.orientation for piece in slices]
    # the series' orientation is the one most instances share; the others are named
    first = max(cosines, key=lambda c: sum(np.abs(o - c).max() <= orientation_tolerance for o in cosines))
    for piece in slices:
        if np.abs(piece.orientation - first).max() > orientation_tolerance:
            raise fail(f"orientation {piece.orientation.tolist()} differs from the series' {first.tolist()} "
                       "(another series or a localizer mixed in); remove it", piece.where, piece.ds)
    shapes = {(int(piece.ds.Rows), int(piece.ds.Columns)) for piece in slices}
    if len(shapes) > 1:
        raise fail(f"instances of different sizes {sorted(shapes)}")
    row, col = _unit(first[:3]), _unit(first[3:])
    normal = np.cross(row, col)
    positions = np.array([piece.position for piece in slices])
    order = np.argsort(positions @ normal)
    slices = [slices[i] for i in order]
    positions = positions[order]
    along = positions @ normal
    steps = np.diff(along)
    if np.any(steps <= 1e-6):
        k = int(np.argmax(steps <= 1e-6))
        raise fail(f"two instances at the same position ({slices[k].name}, {slices[k + 1].name}); "
                   "a duplicate or another series mixed in", slices[k + 1].where, slices[k + 1].ds)
    median = float(np.median(steps))
    for k, step in enumerate(steps):
        if step > GAP_FACTOR * median:
            raise fail(f"a gap of {step:.2f} mm after {slices[k].name} (slices are {median:.2f} mm apart): a "
                       "missing slice; re-send the whole series", slices[k + 1].where, slices[k + 1].ds)
    if np.abs(steps - median).max() > spacing_tolerance * median:
        k = int(np.argmax(np.abs(steps - median)))
        raise fail(f"unequal slice spacing ({steps.min():.3f}-{steps.max():.3f} mm, tolerance "
                   f"{spacing_tolerance:.0%} of {median:.3f})", slices[k + 1].where, slices[k + 1].ds)
    offsets = positions - positions[0]
    sideways = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1).max()
    if sideways > 0.01 * median * len(slices):
        raise fail(f"gantry tilt: slices shift {sideways:.2f} mm sideways along the stack (not stacked along their "
                   "normal); tilted series are refused, not resampled: reconstruct it without tilt")
    pixel = slices[0].pixel_spacing  # (row spacing, column spacing)
    if pixel is None:
        raise fail("no Pixel Spacing: the voxel size is unknown", slices[0].where, slices[0].ds)
    rows, columns = shapes.pop()
    try:  # before any pixel is decoded
        check_memory(f"series {series_uid}", (columns, rows, len(slices)), 1)
    except InputError as error:
        raise SeriesError(str(error)) from error
    planes = []
    for piece in slices:
        try:
            values = decode_frame(piece.ds, piece.frame).astype(np.float32)
        except SourceError as error:
            raise fail(error.reason, piece.where, piece.ds) from error
        planes.append(values * piece.slope + piece.intercept)
    array = np.stack([plane.T for plane in planes], axis=-1)  # (columns, rows, slices) = (X, Y, Z)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * pixel[1], col * pixel[0], normal * median
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    notes = sorted({n for _, ds in instances for n in getattr(ds, "fanet_notes", [])})
    if multi_frame:
        path, ds = multi_frame[0]
        return SeriesVolume(series_uid, array, affine, [ds], [path], notes, [piece.frame for piece in slices])
    return SeriesVolume(series_uid, array, affine, [piece.ds for piece in slices], [piece.path for piece in slices],
                        notes)
