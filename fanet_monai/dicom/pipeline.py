"""DICOM files in, DICOM SEG files out (``fanet dicom_infer``): check every source, infer each one with the
bundle (:class:`~fanet_monai.dicom.predictor.BundlePredictor`), write one SEG per source (highdicom).

A source that cannot be processed gets one log line naming the file, its SOP Instance UID and the reason; the
others are processed. Logs carry file names and UIDs only, never patient name, ID or birth date."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from pydicom.dataset import Dataset

from fanet_monai.dicom.predictor import BundlePredictor
from fanet_monai.dicom.reader import SourceError, check_source, number_of_frames, read_header
from fanet_monai.dicom.seg import SegSettings, build_segmentations

__all__ = ["Summary", "dicom_files", "segment_source", "dicom_infer"]

logger = logging.getLogger("fanet_monai.dicom")


@dataclass
class Summary:
    """Counts of a run; ``failed`` holds one line per source that could not be processed."""

    done: int = 0
    skipped: int = 0
    segs: int = 0
    failed: list[str] = field(default_factory=list)

    def fail(self, error: Exception) -> None:
        line = str(error) if isinstance(error, SourceError) else f"{type(error).__name__}: {error}"
        self.failed.append(line)
        logger.error("FAILED %s", line)


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
    return build_segmentations(source, masks, predictor.identity, settings, fractional, parameters)


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


def checked_sources(files: Iterable[Path], summary: Summary) -> list[tuple[Path, Dataset]]:
    """``(file, header)`` of the files that pass :func:`check_source`, one failure line per other file; a SOP
    instance seen twice is processed once."""
    sources, seen = [], set()
    for path in files:
        try:
            ds = read_header(path)
            check_source(ds, path)
        except SourceError as error:
            summary.fail(error)
            continue
        if ds.SOPInstanceUID in seen:
            summary.skipped += 1
            logger.info("skip %s: SOP Instance UID %s already listed", path, ds.SOPInstanceUID)
            continue
        seen.add(ds.SOPInstanceUID)
        sources.append((path, ds))
    return sources


def dicom_infer(inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, bundle_root: str = ".",
                bundle_dir: str | None = None, fractional: bool = False, predictor: BundlePredictor | None = None,
                **overrides) -> Summary:
    """Write ``<output_dir>/<source SOP Instance UID>.seg.dcm`` (``...-frameN.seg.dcm`` per frame for multi-frame
    sources without functional groups) for every usable DICOM image under ``inputs``; returns the :class:`Summary`.
    Sources are checked before the model is loaded, so bad input is reported first; pass ``predictor`` to reuse
    a loaded bundle (then ``bundle_root``, ``bundle_dir`` and ``overrides`` are not used)."""
    summary = Summary()
    sources = checked_sources(dicom_files(inputs), summary)
    logger.info("%d usable DICOM source(s), %d rejected", len(sources), len(summary.failed))
    if not sources:
        return summary
    predictor = predictor or BundlePredictor(bundle_root, bundle_dir, **overrides)
    settings = predictor.config("dicom_seg") or SegSettings()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path, source in sources:
        try:
            segs = segment_source(predictor, path, source, settings, fractional)
        except SourceError as error:
            summary.fail(error)
            continue
        except Exception as error:  # keep going with the other sources; the line names this one
            summary.fail(SourceError(f"{type(error).__name__}: {error}", source.SOPInstanceUID, path))
            continue
        for k, seg in enumerate(segs):
            name = f"{source.SOPInstanceUID}-frame{k + 1}.seg.dcm" if len(segs) > 1 else \
                f"{source.SOPInstanceUID}.seg.dcm"
            write_atomic(seg, out / name)
        summary.done += 1
        summary.segs += len(segs)
        logger.info("SEG written for %s (SOP Instance UID %s): %d instance(s)", path, source.SOPInstanceUID,
                    len(segs))
    logger.info("%d source(s) segmented, %d SEG instance(s) in %s, %d failed", summary.done, summary.segs, out,
                len(summary.failed))
    return summary
