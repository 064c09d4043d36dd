"""DICOM files in, DICOM SEG files out (``fanet dicom_infer``): check every source, infer each one with the
bundle (:class:`~fanet_monai.dicom.predictor.BundlePredictor`), write one SEG per source (highdicom).

The output folder is checked first (:func:`~fanet_monai.data.inputs.writable_dir`), then every source, then the
model is loaded. A source that cannot be processed gets one log line naming the file, its SOP Instance UID and the
reason; the others are processed. An instance found in several files is segmented once, from the first copy that
works. Files that are not DICOM (no ``.dcm``/``.dicom`` name, no ``DICM`` marker) are noted and ignored; no DICOM
file at all is an :class:`~fanet_monai.errors.InputError`. Logs carry file names and UIDs only, never patient name,
ID or birth date."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from pydicom.dataset import Dataset

from fanet_monai.data.inputs import writable_dir
from fanet_monai.dicom.predictor import BundlePredictor
from fanet_monai.dicom.reader import SourceError, check_source, looks_like_dicom, number_of_frames, read_header
from fanet_monai.dicom.seg import REVIEW_LABEL, SegSettings, build_segmentations, review_model, review_settings
from fanet_monai.errors import InputError

__all__ = ["Source", "Summary", "checked_sources", "dicom_files", "dicom_infer", "is_review", "segment_source"]

logger = logging.getLogger("fanet_monai.dicom")


@dataclass
class Summary:
    """Counts of a run; ``failed`` holds one line per source that could not be processed, ``notes`` one line per
    file that was left out without failing the run (not a DICOM file; an unusable copy of an instance that was
    segmented from another file)."""

    done: int = 0
    skipped: int = 0
    segs: int = 0
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, error: Exception) -> None:
        line = str(error) if isinstance(error, SourceError) else f"{type(error).__name__}: {error}"
        self.failed.append(line)
        logger.error("FAILED %s", line)

    def note(self, line: str) -> None:
        self.notes.append(line)
        logger.warning("%s", line)


@dataclass
class Source:
    """One SOP instance to segment: the files holding it that passed :func:`check_source` (``copies``, in file
    order) and the problems of those that did not (``rejected``)."""

    uid: str
    copies: list[tuple[Path, Dataset]] = field(default_factory=list)
    rejected: list[SourceError] = field(default_factory=list)


def dicom_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named in ``inputs`` and all files under folders in it (recursive, sorted; ``DICOMDIR`` skipped)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.name != "DICOMDIR")
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder (give DICOM files or folders).")
    return files


def segment_source(predictor: BundlePredictor, path: str | os.PathLike, source: Dataset, settings: SegSettings,
                   fractional: bool = False) -> list:
    """SEG dataset(s) for the checked DICOM file ``path`` (its header ``source``): all frames inferred."""
    frames = number_of_frames(source)
    predictions = predictor([(str(path), k if frames > 1 else None) for k in range(frames)])
    masks = [p.probability if fractional else p.mask for p in predictions]
    if fractional and any(m is None for m in masks):
        raise ValueError("fractional SEG needs the postprocessing to threshold with AsDiscreted (no probability "
                         "map found before it).")
    parameters = {"num_passes": str(predictor.config("num_passes", "")), "image_size": str(predictor.config(
        "image_size", ""))}
    segs = build_segmentations(source, masks, predictor.identity, settings, fractional, parameters)
    reviews = [p.review for p in predictions]
    if all(r is not None for r in reviews):  # where_to_look on: the map as a FRACTIONAL "review" SEG beside
        method = str(predictor.config("where_to_look", ""))
        segs += build_segmentations(source, reviews, review_model(predictor.identity), review_settings(settings),
                                    True, {**parameters, "where_to_look": method})
    return segs


def is_review(seg: Dataset) -> bool:
    """A "review" SEG (the where-to-look map, :func:`~fanet_monai.dicom.seg.review_settings`)."""
    return seg.SegmentationType == "FRACTIONAL" and seg.SegmentSequence[0].SegmentLabel == REVIEW_LABEL


def write_atomic(dataset: Dataset, path: Path) -> None:
    """Write ``dataset`` to ``path`` via a temporary file in the same folder: never a partial file at ``path``."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(handle)
    try:
        dataset.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dicom_only(files: Iterable[Path], summary: Summary) -> list[Path]:
    """The files of ``files`` that are meant to be DICOM (:func:`looks_like_dicom`); each other file gets a note."""
    kept = []
    for path in files:
        if looks_like_dicom(path):
            kept.append(path)
        else:
            summary.note(f"{path}: not a DICOM file, ignored")
    return kept


def checked_sources(files: Iterable[Path], summary: Summary) -> list[Source]:
    """The SOP instances of ``files`` with at least one copy that passes :func:`check_source`, in file order; one
    failure line per file of the other instances (and per file without a readable header). The unusable copies of
    a usable instance stay in :attr:`Source.rejected` until :func:`process` knows whether a copy worked."""
    sources: dict[str, Source] = {}
    for path in files:
        try:
            ds = read_header(path)
        except SourceError as error:
            summary.fail(error)
            continue
        uid = str(ds.get("SOPInstanceUID") or "")
        try:
            check_source(ds, path)
        except SourceError as error:
            if not uid:
                summary.fail(error)
            else:
                sources.setdefault(uid, Source(uid)).rejected.append(error)
            continue
        sources.setdefault(uid, Source(uid)).copies.append((path, ds))
    for source in sources.values():
        if not source.copies:
            for error in source.rejected:
                summary.fail(error)
    return [source for source in sources.values() if source.copies]


def process(predictor: BundlePredictor, source: Source, out: Path, settings: SegSettings, fractional: bool,
            summary: Summary) -> None:
    """Segment ``source`` from its first copy that works and write its SEG(s) to ``out``; the copies not used are
    skipped (a note naming both files for an unusable one), and when no copy works each one is a failure."""
    problems = list(source.rejected)
    for k, (path, ds) in enumerate(source.copies):
        try:
            segs = segment_source(predictor, path, ds, settings, fractional)
        except SourceError as error:
            problems.append(error)
            continue
        except Exception as error:  # keep going with the other sources; the line names this one
            problems.append(SourceError(f"{type(error).__name__}: {error}", source.uid, path))
            continue
        for kind, group in (("seg", [s for s in segs if not is_review(s)]), ("review.seg", [s for s in segs
                                                                                            if is_review(s)])):
            for n, seg in enumerate(group):
                name = f"{source.uid}-frame{n + 1}.{kind}.dcm" if len(group) > 1 else f"{source.uid}.{kind}.dcm"
                write_atomic(seg, out / name)
        summary.done += 1
        summary.segs += len(segs)
        logger.info("SEG written for %s (SOP Instance UID %s): %d instance(s)", path, source.uid, len(segs))
        for problem in problems:
            summary.skipped += 1
            summary.note(f"{problem} (a duplicate, not used: {path} holds the same SOP Instance UID and was "
                         "segmented)")
        for other, _ in source.copies[k + 1:]:
            summary.skipped += 1
            logger.info("skip %s: SOP Instance UID %s already segmented from %s", other, source.uid, path)
        return
    for problem in problems:
        summary.fail(problem)


def dicom_infer(inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, bundle_root: str = ".",
                bundle_dir: str | None = None, fractional: bool = False, predictor: BundlePredictor | None = None,
                **overrides) -> Summary:
    """Write ``<output_dir>/<source SOP Instance UID>.seg.dcm`` (``...-frameN.seg.dcm`` per frame for multi-frame
    sources without functional groups) for every usable DICOM image under ``inputs``; returns the :class:`Summary`.
    Sources are checked before the model is loaded, so bad input is reported first; pass ``predictor`` to reuse
    a loaded bundle (then ``bundle_root``, ``bundle_dir`` and ``overrides`` are not used).

    Raises:
        InputError: ``output_dir`` cannot be written (checked first), or ``inputs`` hold no DICOM file."""
    out = Path(writable_dir(output_dir))
    summary = Summary()
    files = dicom_only(dicom_files(inputs), summary)
    if not files:
        names = ", ".join(str(i) for i in inputs)
        ignored = f" ({len(summary.notes)} other file(s) ignored)" if summary.notes else ""
        raise InputError(f"{names}: no DICOM files found{ignored}; give a DICOM file or a folder holding DICOM "
                         "files (.dcm/.dicom names or the DICM marker; folders are searched recursively).")
    sources = checked_sources(files, summary)
    logger.info("%d usable DICOM source(s), %d rejected", len(sources), len(summary.failed))
    if not sources:
        return summary
    predictor = predictor or BundlePredictor(bundle_root, bundle_dir, **overrides)
    settings = predictor.config("dicom_seg") or SegSettings()
    for source in sources:
        process(predictor, source, out, settings, fractional, summary)
    logger.info("%d source(s) segmented, %d SEG instance(s) in %s, %d failed", summary.done, summary.segs, out,
                len(summary.failed))
    return summary
