"""One DICOM SEG per CT/MR series (issue 21, item 2): a label volume on the series' grid as a highdicom SEG with one
segment per class, referencing every source instance, sharing the series' Frame of Reference with plane positions,
so that a viewer overlays it on the series.

The label volume is ``(X, Y, Z)`` on :class:`~fanet_monai.dicom.series.SeriesVolume`'s grid (what ``fanet infer``
writes for the series exported to NIfTI, or what a model returns on ``SeriesVolume.array``); it goes back to DICOM's
``(slice, row, column)`` frames in the series' slice order (for an enhanced multi-frame source, in its frame
order: highdicom pairs SEG frame ``i`` with source frame ``i``). Only frames holding foreground are stored
(``omit_empty_frames``, highdicom's default; an all-background series still gets one frame, as the standard needs
one). Segment labels and codes are the run's (:meth:`fanet_monai.dicom.seg.SegSettings.segment`), uncoded and said
so when the run declared none.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.uid import generate_uid

from fanet_monai.dicom.predictor import ModelIdentity
from fanet_monai.dicom.seg import UNCODED_SCHEME, SegSettings, review_model, review_settings
from fanet_monai.dicom.series import SeriesVolume

__all__ = ["build_series_review", "build_series_segmentation", "series_seg_sop_uid", "series_seg_uids"]

logger = logging.getLogger(__name__)


def series_seg_uids(volume: SeriesVolume, model: ModelIdentity) -> tuple[str, str]:
    """``(SEG series UID, SEG SOP Instance UID)``, deterministic in the source series and ``model.key``: storing a
    result twice is a no-op in a PACS."""
    source = volume.datasets[0]
    series = generate_uid(entropy_srcs=["fanet-series-seg-series", str(source.StudyInstanceUID), volume.series_uid,
                                        model.key])
    return series, series_seg_sop_uid(volume.series_uid, model)


def series_seg_sop_uid(series_uid: str, model: ModelIdentity) -> str:
    """The SOP Instance UID of the SEG of the series ``series_uid`` by ``model`` (see :func:`series_seg_uids`)."""
    return generate_uid(entropy_srcs=["fanet-series-seg", series_uid, model.key])


def _source_frames(volume: SeriesVolume, array: np.ndarray) -> np.ndarray:
    """``array`` ``(X, Y, Z)`` on the volume's grid as SEG frames ``(Z, rows, columns)``: in slice order, or for an
    enhanced multi-frame source in its frame order (SEG frame ``i`` is source frame ``i``)."""
    frames = np.ascontiguousarray(np.transpose(array, (2, 1, 0)))
    if volume.frames is not None:
        in_source_order = np.empty_like(frames)
        in_source_order[volume.frames] = frames
        frames = in_source_order
    return frames


def build_series_review(volume: SeriesVolume, review: np.ndarray, model: ModelIdentity, settings: SegSettings,
                        parameters: dict | None = None) -> hd.seg.Segmentation:
    """The FRACTIONAL "review" SEG of a series: the where-to-look map ``review`` ``(X, Y, Z)`` in [0, 1] on the
    volume's grid as one segment (:func:`~fanet_monai.dicom.seg.review_settings`), its own UIDs
    (:func:`~fanet_monai.dicom.seg.review_model`)."""
    if review.shape != volume.array.shape:
        raise ValueError(f"series {volume.series_uid}: a map of shape {review.shape} is not on the series' grid "
                         f"{volume.array.shape}.")
    settings, model = review_settings(settings), review_model(model)
    label, category, kind, _ = settings.segment(1)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=category, segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=settings.algorithm(model, parameters))
    series_uid, sop_uid = series_seg_uids(volume, model)
    return hd.seg.Segmentation(
        source_images=volume.datasets,
        pixel_array=_source_frames(volume, np.clip(review, 0.0, 1.0).astype(np.float32)),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[description],
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        instance_number=1,
        **settings.equipment(model),
        content_description=f"{settings.algorithm_name} where-to-look map of series {volume.series_uid}"[-64:],
        omit_empty_frames=True,
    )


def build_series_segmentation(volume: SeriesVolume, labels: np.ndarray, num_classes: int, model: ModelIdentity,
                              settings: SegSettings, parameters: dict | None = None) -> hd.seg.Segmentation:
    """The SEG of ``labels`` (``(X, Y, Z)`` class codes ``0..num_classes`` on ``volume``'s grid).

    Raises:
        ValueError: ``labels`` not on the volume's grid, or holding codes outside ``0..num_classes``.
    """
    if labels.shape != volume.array.shape:
        raise ValueError(f"series {volume.series_uid}: labels of shape {labels.shape} are not on the series' grid "
                         f"{volume.array.shape}.")
    codes_found = np.unique(labels)
    if codes_found.min() < 0 or codes_found.max() > num_classes:
        raise ValueError(f"series {volume.series_uid}: label codes {codes_found.tolist()} outside 0..{num_classes}.")
    algorithm = settings.algorithm(model, parameters)
    descriptions = []
    for number in range(1, int(num_classes) + 1):
        label, category, kind, coded = settings.segment(number)
        if not coded:
            logger.warning("SEG segment %d %r: the model's run declares no codes for it; written with the local "
                           "uncoded scheme %s (declare --label_codes at training).", number, label, UNCODED_SCHEME)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    frames = _source_frames(volume, labels.astype(np.uint8))
    series_uid, sop_uid = series_seg_uids(volume, model)
    return hd.seg.Segmentation(
        source_images=volume.datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        instance_number=1,
        **settings.equipment(model),
        content_description=f"{settings.algorithm_name} segmentation of series {volume.series_uid}"[-64:],
        omit_empty_frames=True,
    )
