"""The volume report of a series (issue 21, item 3): a DICOM Structured Report, TID 1500 Measurement Report
(highdicom ``Comprehensive3DSR``), with the volume of every segment in mL, each measurement referencing its segment
of the series' SEG and the source series; the same numbers as JSON next to it.

A segment's volume is its voxel count times the voxel volume of the series grid (the product of the spacings, mm³,
/ 1000 for mL): the SEG's own voxels, counted on :class:`~fanet_monai.dicom.series.SeriesVolume`'s grid. Hippocampal,
organ and lesion volumes are such measurements. The report is written by an algorithm (the device observer is the
model), not verified by a person: ``is_verified`` stays false and says so.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from fanet_monai.dicom.predictor import ModelIdentity
from fanet_monai.dicom.seg import SegSettings
from fanet_monai.dicom.series import SeriesVolume

__all__ = ["MILLILITER", "build_volume_report", "segment_volumes", "volume_report_uid"]

#: UCUM millilitre
MILLILITER = CodedConcept("mL", "UCUM", "milliliter")


def segment_volumes(volume: SeriesVolume, labels: np.ndarray, num_classes: int,
                    settings: SegSettings) -> list[dict]:
    """``[{"segment": k, "label": name, "voxels": n, "volume_ml": v}]`` for classes ``1..num_classes`` of
    ``labels`` (``(X, Y, Z)`` on ``volume``'s grid)."""
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    rows = []
    for k in range(1, int(num_classes) + 1):
        count = int((labels == k).sum())
        rows.append({"segment": k, "label": settings.segment(k)[0], "voxels": count,
                     "volume_ml": round(count * voxel_ml, 4)})
    return rows


def volume_report_uid(series_uid: str, model: ModelIdentity) -> str:
    """The SOP Instance UID of the volume report of the series ``series_uid`` by ``model``: deterministic, so
    storing a report twice is a no-op in a PACS and a PACS can be asked whether it holds it."""
    return generate_uid(entropy_srcs=["fanet-sr", series_uid, model.key])


def build_volume_report(volume: SeriesVolume, seg: Dataset, volumes: list[dict], model: ModelIdentity,
                        settings: SegSettings) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of ``volumes`` (:func:`segment_volumes`) for the ``seg`` of ``volume``'s series."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["fanet-device", model.key]), name=settings.algorithm_name,
            manufacturer_name=settings.manufacturer, model_name=model.key[:64]))
    context = hd.sr.ObservationContext(observer_device_context=observer)
    algorithm = hd.sr.AlgorithmIdentification(name=settings.algorithm_name, version=model.key[:64])
    groups = []
    for row in volumes:
        _, category, kind, _ = settings.segment(row["segment"])
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(entropy_srcs=["fanet-tracking", seg.SOPInstanceUID, str(row["segment"])]),
                identifier=f"segment {row['segment']} {row['label']}"[:64]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=row["segment"],
                source_series=hd.sr.SourceSeriesForSegmentation(volume.series_uid)),
            finding_type=kind, finding_category=category,
            measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=float(row["volume_ml"]), unit=MILLILITER,
                                            algorithm_id=algorithm)]))
    modality = str(volume.datasets[0].get("Modality", ""))
    procedure = codes.LN.CTUnspecifiedBodyRegion if modality == "CT" else codes.LN.DiagnosticImagingReport
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=procedure,
                                     imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[seg, *volume.datasets], content=report,
        series_instance_uid=generate_uid(entropy_srcs=["fanet-sr-series", volume.series_uid, model.key]),
        series_number=settings.series_number + 1,
        sop_instance_uid=volume_report_uid(volume.series_uid, model),
        instance_number=1, manufacturer=settings.manufacturer, is_complete=True, is_final=False, is_verified=False)
