"""``fanet dicom_infer`` for a run trained on volumes: one SEG per CT/MR series (issue 21, items 1-2).

Every series under the inputs is read as a volume (:func:`fanet_monai.dicom.series.read_series`: checked, one line
per refused series naming the instance; the others go on), exported to NIfTI with its grid, and segmented by the
bundle's own ``inference.json`` + ``volume.json`` in one run over all series — exactly ``fanet infer`` on those
NIfTI files, so the SEG holds the voxels ``fanet infer`` writes. Each label volume becomes one SEG
(:func:`fanet_monai.dicom.series_seg.build_series_segmentation`) named ``<Series Instance UID>.seg.dcm``, with its
volume report beside it (:mod:`fanet_monai.dicom.sr`: ``.sr.dcm``, TID 1500, and ``.volumes.json``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import highdicom as hd
import nibabel as nib
import numpy as np

from fanet_monai import __version__
from fanet_monai.bundle import bundle_configs, run_workflow
from fanet_monai.data.inputs import writable_dir
from fanet_monai.dicom.pipeline import Summary, write_atomic
from fanet_monai.dicom.predictor import ModelIdentity, sha256_of
from fanet_monai.dicom.reader import SourceError
from fanet_monai.dicom.seg import SegSettings
from fanet_monai.dicom.series import SeriesError, SeriesVolume, find_series, read_series
from fanet_monai.dicom.series_seg import build_series_review, build_series_segmentation
from fanet_monai.dicom.sr import build_volume_report, segment_volumes
from fanet_monai.io import atomic_write
from fanet_monai.errors import InputError
from fanet_monai.where_to_look import MAP_KEY, check_where_to_look

__all__ = ["SeriesResult", "dicom_infer_series", "model_identity", "segment_series"]

logger = logging.getLogger(__name__)


def model_identity(bundle_root: Path, bundle_dir: str | None, ckpt_path: str | None) -> ModelIdentity:
    weights = Path(ckpt_path) if ckpt_path else bundle_root / "models" / "model.pt"
    if not weights.is_file():
        raise InputError(f"{weights}: no trained network (train first, or pass --bundle_root RUN).")
    meta = json.loads((Path(bundle_configs("metadata", bundle_dir=bundle_dir)[0])).read_text())
    return ModelIdentity("fanet-monai", __version__, str(meta.get("version", "0")), sha256_of(weights))


@dataclass
class SeriesResult:
    """What one series gives: its SEG, its volume report (SR) and the measured volumes (one row per segment)."""

    volume: SeriesVolume
    seg: hd.seg.Segmentation
    report: hd.sr.Comprehensive3DSR
    measured: list[dict]
    model: ModelIdentity
    review: hd.seg.Segmentation | None = None  #: the where-to-look map as a FRACTIONAL SEG (``where_to_look`` on)

    def summary(self) -> dict:
        """The report's numbers as JSON (``<Series Instance UID>.volumes.json``)."""
        return {"series_instance_uid": self.volume.series_uid, "seg_sop_instance_uid": self.seg.SOPInstanceUID,
                "sr_sop_instance_uid": self.report.SOPInstanceUID, "model": self.model.key,
                "voxel_mm": list(self.volume.spacing), "segments": self.measured}


def segment_series(volumes: Mapping[str, SeriesVolume], model: ModelIdentity, bundle_root: str = ".",
                   bundle_dir: str | None = None, **overrides: Any) -> dict[str, SeriesResult]:
    """Segment the series ``volumes`` (Series Instance UID → volume) with the bundle's ``inference.json`` +
    ``volume.json`` in one run (each exported to NIfTI with its grid: exactly ``fanet infer`` on those files), and
    build each one's SEG and volume report."""
    settings = SegSettings(label_names=overrides.get("label_names"), label_codes=overrides.get("label_codes"))
    num_classes = int(overrides.get("num_classes", 1))
    results = {}
    with tempfile.TemporaryDirectory(prefix="fanet-series-") as work:
        images, masks = Path(work) / "images", Path(work) / "masks"
        images.mkdir()
        for uid, volume in volumes.items():
            nib.save(nib.Nifti1Image(volume.array, volume.affine), images / f"{uid}.nii.gz")
        logger.info("segmenting %d series with the volume bundle", len(volumes))
        run_workflow(bundle_configs("inference", "volume", bundle_dir=bundle_dir), "run", dataset_dir=str(images),
                     output_dir=str(masks), bundle_root=str(bundle_root), **overrides)
        for uid, volume in volumes.items():
            labels = np.asarray(nib.load(masks / f"{uid}.nii.gz").dataobj)
            seg = build_series_segmentation(volume, labels, num_classes, model, settings,
                                            parameters={"num_passes": overrides.get("num_passes", 3)})
            measured = segment_volumes(volume, labels, num_classes, settings)
            report = build_volume_report(volume, seg, measured, model, settings)
            review = None
            if check_where_to_look(overrides.get("where_to_look")) is not None:
                look = np.asarray(nib.load(masks / f"{uid}_{MAP_KEY}.nii.gz").dataobj, dtype=np.float32)
                review = build_series_review(volume, look, model, settings,
                                             {"where_to_look": str(overrides.get("where_to_look"))})
            results[uid] = SeriesResult(volume, seg, report, measured, model, review)
            logger.info("SEG and volume report made for series %s (%d instances): %s", uid, len(volume.datasets),
                        ", ".join(f"{r['label']} {r['volume_ml']} mL" for r in measured))
    return results


def dicom_infer_series(inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, bundle_root: str = ".",
                       bundle_dir: str | None = None, **overrides: Any) -> Summary:
    """Write ``<output_dir>/<Series Instance UID>.seg.dcm`` for every usable series under ``inputs``.

    Raises:
        InputError: ``output_dir`` cannot be written, no DICOM file under ``inputs``, no trained network."""
    out = Path(writable_dir(output_dir))
    summary = Summary()
    series: dict[str, list] = {}
    for source in inputs:
        try:
            series.update(find_series(source))
        except SourceError as error:
            summary.fail(error)
    if not series:
        raise InputError(f"{', '.join(str(i) for i in inputs)}: no DICOM series found; give a folder holding the "
                         "instances of CT/MR series (searched recursively).")
    model = model_identity(Path(bundle_root), bundle_dir, overrides.get("ckpt_path"))
    volumes = {}
    for uid, instances in series.items():
        try:
            volumes[uid] = read_series(instances)
        except SeriesError as error:
            summary.fail(error)
            continue
        for note in volumes[uid].notes:
            summary.note(f"series {uid}: {note}")
    if not volumes:
        return summary
    for uid, result in segment_series(volumes, model, bundle_root, bundle_dir, **overrides).items():
        write_atomic(result.seg, out / f"{uid}.seg.dcm")
        write_atomic(result.report, out / f"{uid}.sr.dcm")
        if result.review is not None:
            write_atomic(result.review, out / f"{uid}.review.seg.dcm")
        with atomic_write(out / f"{uid}.volumes.json", "w") as f:
            json.dump(result.summary(), f, indent=1)
        summary.done += 1
        summary.segs += 1
    return summary
