"""DICOM Segmentation objects (highdicom) for a source image and its predicted masks.

One SEG per source instance, in the source's Study, in a new Series per (source series, model version); BINARY by
default, FRACTIONAL (probabilities, 0..255) as an option. The SOP Instance and Series UIDs are derived
deterministically from the source UIDs and the model version (:meth:`ModelIdentity.key`), so storing a result twice
is a no-op in a PACS and a run can tell which sources are done.

Classic multi-frame IODs (Ophthalmic Photography 8-bit, Multi-frame True Colour / Grayscale SC) declare
``NumberOfFrames`` but carry no functional groups and no Frame of Reference. highdicom 0.28 treats every image of
a multi-frame IOD as an *enhanced* multi-frame image and reads ``SharedFunctionalGroupsSequence`` from it (hence
``AttributeError: SharedFunctionalGroupsSequence``), and without a Frame of Reference it supports one source frame
per SEG. :func:`build_segmentations` therefore hands highdicom a *derived single-frame description* of the source
(the header with the single-frame Secondary Capture SOP class, no ``NumberOfFrames``, no pixel data) and then
restores the real references in the SEG (Referenced SOP Class UID, and for multi-frame sources the Referenced Frame
Number): a 1-frame OP image gets one SEG, an F-frame multi-frame SC image F SEG instances (one per frame, each
referencing its source frame) in the same SEG series.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import highdicom as hd
import numpy as np
from highdicom._standard_utils import is_multiframe_image
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from fanet_monai.dicom.predictor import ModelIdentity
from fanet_monai.dicom.reader import number_of_frames

__all__ = ["REVIEW_LABEL", "SegSettings", "build_segmentations", "review_model", "review_settings", "seg_uids",
           "SECONDARY_CAPTURE", "UNCODED_SCHEME"]

logger = logging.getLogger(__name__)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: Type 2 attributes highdicom copies from the source; empty is valid, absent is not.
_TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                      "StudyDate", "StudyTime", "ReferringPhysicianName")


#: the local coding scheme of a segment whose run declared no codes (DICOM PS3.16: "99" designators are private)
UNCODED_SCHEME = "99FANET"


@dataclass
class SegSettings:
    """What the SEG says (``dicom_seg`` in ``bundle/configs/dicom.json``).

    What the model segments belongs to its **run**, not to the bundle: ``label_names`` (``{"1": "Vessel"}``) and
    ``label_codes`` (``{"1": {"category": [value, scheme, meaning], "type": [value, scheme, meaning]}}``, e.g. SNOMED
    CT ``["41329004", "SCT", "Polyp"]``) are declared at training (``fanet train --label_names ... --label_codes
    ...``, or taken from a Decathlon ``dataset.json``), recorded in ``run.json`` and given here by the bundle
    (``@label_names``, ``@label_codes``). ``segment_label``, ``property_category`` and ``property_type`` override
    segment 1 explicitly (``--dicom_seg#segment_label Vessel``). A segment without declared codes is written with a
    generic, explicitly uncoded description (the local scheme :data:`UNCODED_SCHEME`, meaning "uncoded") and a
    warning says so: never another model's anatomy.
    """

    segment_label: str | None = None
    property_category: Sequence[str] | None = None
    property_type: Sequence[str] | None = None
    label_names: Mapping[str, str] | None = None
    label_codes: Mapping[str, Mapping[str, Sequence[str]]] | None = None
    algorithm_name: str = "FANet"
    series_description: str = "FANet SEG"
    series_number: int = 9100
    manufacturer: str = "fanet-monai"
    content_label: str = "FANET"
    modalities: Sequence[str] = field(default_factory=lambda: ["ES", "OP", "XC", "OT"])

    def series_description_for(self, model: ModelIdentity) -> str:
        """Series Description of this model version's SEG series (LO, at most 64 characters)."""
        return f"{self.series_description} {model.key}"[:64]

    def equipment(self, model: ModelIdentity) -> dict:
        """The SEG's equipment, series and content attributes for ``model`` (keyword arguments of highdicom's
        ``Segmentation``), shared by the per-instance and the per-series SEG."""
        return dict(series_number=self.series_number, manufacturer=self.manufacturer,
                    manufacturer_model_name=self.algorithm_name,
                    software_versions=f"{model.project} {model.project_version}",
                    device_serial_number=model.weights_sha256[:16],
                    series_description=self.series_description_for(model), content_label=self.content_label)

    def algorithm(self, model: ModelIdentity, parameters: dict | None = None) -> hd.AlgorithmIdentificationSequence:
        """Which algorithm made the segments: this model version, its weights' SHA-256 and ``parameters``."""
        return hd.AlgorithmIdentificationSequence(
            name=self.algorithm_name, family=codes.cid7162.ArtificialIntelligence,
            version=f"{model.project} {model.project_version} bundle {model.bundle_version}"[:64],
            source=model.project, parameters={"weights_sha256": model.weights_sha256, **(parameters or {})})

    def segment(self, number: int = 1) -> tuple[str, CodedConcept, CodedConcept, bool]:
        """``(label, category, type, coded)`` of segment ``number`` (class code ``number``), see the class doc."""
        key = str(number)
        names = {str(k): str(v) for k, v in (self.label_names or {}).items()}
        label = (self.segment_label if number == 1 and self.segment_label else None) or names.get(key) or \
            f"Segment {number}"
        declared = {str(k): v for k, v in (self.label_codes or {}).items()}.get(key) or {}
        category = (self.property_category if number == 1 and self.property_category else None) or \
            declared.get("category")
        kind = (self.property_type if number == 1 and self.property_type else None) or declared.get("type")
        if category and kind:
            return label[:64], _concept(category, "category"), _concept(kind, "type"), True
        return (label[:64], CodedConcept("uncoded", UNCODED_SCHEME, "Uncoded category"),
                CodedConcept(f"segment-{number}"[:16], UNCODED_SCHEME, f"Uncoded: {label}"[:64]), False)


#: the segment of a where-to-look ("review") SEG
REVIEW_LABEL = "Review priority"


def review_settings(settings: SegSettings) -> SegSettings:
    """The description of the FRACTIONAL "review" SEG that carries the where-to-look map (issue 22): one segment
    :data:`REVIEW_LABEL`, coded in the local scheme (no standard code names "where a person should look"), its own
    series (number + 2, description "... review")."""
    return replace(settings, segment_label=REVIEW_LABEL,
                   property_category=["review", UNCODED_SCHEME, "Review priority (not anatomy)"],
                   property_type=["where-to-look", UNCODED_SCHEME, "Where to look (FANet refinement)"],
                   series_description=f"{settings.series_description} review", series_number=settings.series_number + 2)


def review_model(model: ModelIdentity) -> ModelIdentity:
    """``model`` as the maker of review SEGs: its own deterministic UIDs beside the mask SEG's."""
    return replace(model, bundle_version=f"{model.bundle_version}-review")


def _concept(code: Sequence[str], what: str) -> CodedConcept:
    if isinstance(code, str) or len(code) != 3 or not all(str(c) for c in code):
        raise ValueError(f"a segment {what} code must be [value, scheme designator, meaning], got {code!r}.")
    return CodedConcept(*(str(c) for c in code))


def seg_uids(source: Dataset, model: ModelIdentity) -> tuple[str, list[str]]:
    """``(series UID, [SOP Instance UID per SEG])`` for ``source``: one SEG, or one per frame of a multi-frame
    source without functional groups (see the module doc). Deterministic in the source UIDs and ``model.key``."""
    series = generate_uid(entropy_srcs=["fanet-seg-series", str(source.StudyInstanceUID),
                                        str(source.SeriesInstanceUID), model.key])
    frames = number_of_frames(source) if _needs_derived_source(source) else 1
    instances = [generate_uid(entropy_srcs=["fanet-seg", str(source.SOPInstanceUID), str(k), model.key])
                 for k in range(frames)]
    return series, instances


def _needs_derived_source(source: Dataset) -> bool:
    return is_multiframe_image(source) and "SharedFunctionalGroupsSequence" not in source


def _derived_single_frame(source: Dataset) -> Dataset:
    """Header-only copy of ``source`` that highdicom reads as a single-frame image (see the module doc)."""
    derived = Dataset()
    for element in source:
        if element.keyword not in ("PixelData", "NumberOfFrames", "FrameIncrementPointer", "FrameTime",
                                   "SOPClassUID"):
            derived.add(element)
    derived.file_meta = source.file_meta
    derived.SOPClassUID = SECONDARY_CAPTURE  # a new element: the source's own stays untouched
    return derived


def _restore_references(seg: hd.seg.Segmentation, source: Dataset, frame: int | None) -> None:
    """Point every reference to the source back at its real SOP class, and in Source Image Sequence items at the
    source frame (``frame`` 0-based; Referenced Frame Number is 1-based) of a multi-frame source."""
    for element in list(seg.iterall()):
        if element.VR != "SQ":
            continue
        for index, item in enumerate(element.value):
            if item.get("ReferencedSOPInstanceUID") != source.SOPInstanceUID:
                continue
            if element.keyword == "SourceImageSequence" and frame is not None:
                item = copy.deepcopy(item)  # highdicom may share this item with other sequences
                item.ReferencedFrameNumber = frame + 1
                element.value[index] = item
            item.ReferencedSOPClassUID = source.SOPClassUID


def build_segmentations(
    source: Dataset,
    masks: Sequence[np.ndarray],
    model: ModelIdentity,
    settings: SegSettings | None = None,
    fractional: bool = False,
    parameters: dict[str, str] | None = None,
) -> list[hd.seg.Segmentation]:
    """SEG instance(s) for ``source`` (a header is enough) and one mask per frame.

    Args:
        masks: per source frame, ``(Rows, Columns)``: bool (BINARY) or float in [0, 1] (``fractional``).
        model: recorded in the AlgorithmIdentificationSequence (name, version, weights SHA-256) and the UIDs.
        parameters: more algorithm parameters to record (``num_passes``, ...), as strings.

    Returns:
        One SEG, or one per frame for multi-frame sources without functional groups (module doc). An empty mask is
        stored as an all-zero frame (highdicom cannot omit every frame; DICOM allows an empty segment frame).
    """
    settings = settings or SegSettings()
    frames = number_of_frames(source)
    if len(masks) != frames:
        raise ValueError(f"{frames} source frame(s) but {len(masks)} mask(s).")
    for mask in masks:
        if mask.shape != (source.Rows, source.Columns):
            raise ValueError(f"mask shape {mask.shape} is not the source's (Rows, Columns) "
                             f"= ({source.Rows}, {source.Columns}).")
    algorithm = settings.algorithm(model, parameters)
    label, category, kind, coded = settings.segment(1)
    if not coded:
        logger.warning("SEG segment 1 %r: the model's run declares no codes for it; written with the local uncoded "
                       "scheme %s. Declare them at training (--label_codes '{\"1\": {\"category\": [...], \"type\": "
                       "[...]}}') or with --dicom_seg#property_category/#property_type.", label, UNCODED_SCHEME)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    derived = _needs_derived_source(source)
    reference = _derived_single_frame(source) if derived else source
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword not in reference:
            if reference is source:
                reference = _derived_single_frame(source) if derived else source.copy()
            setattr(reference, keyword, "")
    series_uid, instance_uids = seg_uids(source, model)
    groups = [(k, masks[k][None]) for k in range(frames)] if derived else [(None, np.stack(list(masks)))]
    if not derived and frames == 1:
        groups = [(None, masks[0])]
    segs = []
    for (frame, pixels), sop_uid in zip(groups, instance_uids):
        pixels = pixels.astype(np.float32) if fractional else pixels.astype(bool).astype(np.uint8)
        if derived:
            pixels = pixels[0]
        seg = hd.seg.Segmentation(
            source_images=[reference],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional
            else hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            instance_number=int(source.get("InstanceNumber") or 1) if frame is None else frame + 1,
            **settings.equipment(model),
            content_description=f"{label} segmentation by {settings.algorithm_name}"[:64],
            max_fractional_value=255,
            omit_empty_frames=False,
        )
        if derived:
            _restore_references(seg, source, frame if frames > 1 else None)
        if "FrameOfReferenceUID" not in seg and "PatientOrientation" not in seg:
            seg.PatientOrientation = source.get("PatientOrientation", "")  # General Image, type 2C without FoR
        segs.append(seg)
    return segs
