"""DICOM source instances made from arrays (for tests, demos and the benchmark): VL Endoscopic (ES), Ophthalmic
Photography 8-bit (OP), Secondary Capture (SC) and Multi-frame True Colour / Grayscale Byte SC, uncompressed
(RGB, YBR_FULL, YBR_FULL_422, MONOCHROME1/2) or JPEG baseline (encoded with Pillow, ``YBR_FULL_422``)."""

from __future__ import annotations

import copy
import io
import os

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import JPEGBaseline8Bit, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

__all__ = ["CT_IMAGE", "IODS", "MR_IMAGE", "make_ct_series", "make_enhanced_series", "make_source"]

#: CT Image Storage
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
#: MR Image Storage
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"

#: kind -> (SOP Class UID, Modality, multi-frame IOD)
IODS: dict[str, tuple[str, str, bool]] = {
    "ES": ("1.2.840.10008.5.1.4.1.1.77.1.1", "ES", False),  # VL Endoscopic Image
    "OP": ("1.2.840.10008.5.1.4.1.1.77.1.5.1", "OP", True),  # Ophthalmic Photography 8 Bit Image
    "SC": ("1.2.840.10008.5.1.4.1.1.7", "OT", False),  # Secondary Capture Image
    "MFSC": ("1.2.840.10008.5.1.4.1.1.7.4", "OT", True),  # Multi-frame True Color SC Image
    "MFSC_GRAY": ("1.2.840.10008.5.1.4.1.1.7.2", "OT", True),  # Multi-frame Grayscale Byte SC Image
}


def make_source(
    pixels: np.ndarray,
    kind: str = "ES",
    photometric: str | None = None,
    jpeg: bool = False,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID-0001",
    birth_date: str = "19700101",
    instance_number: int = 1,
) -> Dataset:
    """A DICOM dataset (with file meta, ready for ``save_as(enforce_file_format=True)``) holding ``pixels``.

    Args:
        pixels: uint8/uint16 ``(H, W)`` gray or ``(H, W, 3)`` RGB; ``(F, H, W[, 3])`` for multi-frame kinds.
        kind: a key of :data:`IODS`.
        photometric: for colour ``"RGB"`` (default), ``"YBR_FULL"`` or ``"YBR_FULL_422"`` (even width); for gray
            ``"MONOCHROME2"`` (default) or ``"MONOCHROME1"`` (stored inverted, so it reads back as ``pixels``).
        jpeg: JPEG baseline (8-bit; colour becomes ``YBR_FULL_422`` as JPEG stores it), lossy.
    """
    sop_class, modality, multiframe = IODS[kind]
    pixels = np.asarray(pixels)
    frames = pixels if multiframe and pixels.ndim == (4 if kind != "MFSC_GRAY" else 3) else pixels[None]
    colour = frames.ndim == 4
    photometric = photometric or ("RGB" if colour else "MONOCHROME2")
    if jpeg:
        photometric = "YBR_FULL_422" if colour else "MONOCHROME2"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, birth_date, "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20250101", "120000", "1", "ACC1"
    ds.ReferringPhysicianName = ""
    ds.ContentDate, ds.ContentTime = "20250101", "120001"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, instance_number
    ds.Manufacturer = "fanet-monai samples"
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if kind in ("ES", "OP") else ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD" if kind.startswith(("SC", "MFSC")) else None
    if ds.ConversionType is None:
        del ds.ConversionType
    ds.LossyImageCompression = "01" if jpeg else "00"
    if kind in ("ES", "OP"):
        ds.AcquisitionContextSequence = []
    if multiframe:
        ds.NumberOfFrames = len(frames)
    n, rows, cols = frames.shape[:3]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if frames.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if colour:
        ds.PlanarConfiguration = 0
    if jpeg:
        ds.PixelData = encapsulate([_jpeg(f) for f in frames])
    else:
        ds.PixelData = _native(frames, photometric, bits)
    return ds


def make_ct_series(
    hounsfield: np.ndarray,
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.0),
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin: tuple[float, float, float] = (-100.0, -120.0, 50.0),
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> list[Dataset]:
    """Single-frame CT Image Storage instances of a volume ``hounsfield`` ``(X, Y, Z)`` (X along the rows' direction
    cosine, Y along the columns', Z along their normal), stored unsigned 16-bit with Rescale Intercept -1024, one
    instance per Z slice at ``origin + k * spacing[2] * normal`` (LPS, mm). ``spacing`` is (X, Y, Z) in mm."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    study, series = study_uid or generate_uid(), series_uid or generate_uid()
    frame_of_reference = generate_uid()
    out = []
    for k in range(hounsfield.shape[2]):
        stored = np.clip(hounsfield[:, :, k].T + 1024, 0, 65535).astype(np.uint16)  # (rows, columns)
        ds = make_source(stored, "SC", study_uid=study, series_uid=series, instance_number=k + 1)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
        ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
        del ds.ConversionType
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[2] * normal]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # (between rows, between columns)
        ds.SliceThickness = float(spacing[2]) * 1.5  # deliberately not the spacing, as in real series
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.KVP, ds.AcquisitionNumber = 120, 1
        out.append(ds)
    return out


def make_enhanced_series(series: list[Dataset], modality: str = "CT", shuffle_frames: bool = True) -> Dataset:
    """One Legacy Converted Enhanced CT or MR Image (a multi-frame instance, per-frame plane positions in the
    functional groups; highdicom's conversion) of the single-frame series ``series`` (from :func:`make_ct_series`;
    ``modality="MR"`` makes them MR Image Storage first). ``shuffle_frames`` stores the frames out of slice order,
    as nothing in the standard forbids."""
    import highdicom as hd

    sources = [copy.deepcopy(ds) for ds in series]
    if modality == "MR":
        for ds in sources:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE
            ds.Modality = "MR"
            for keyword in ("KVP", "RescaleType"):
                if keyword in ds:
                    delattr(ds, keyword)
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "3D"
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 500.0, 10.0, 1
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            ds.WindowCenter, ds.WindowWidth = 40, 400
    if shuffle_frames:
        sources = sources[1::2] + sources[0::2]
    convert = {"CT": hd.legacy.LegacyConvertedEnhancedCTImage, "MR": hd.legacy.LegacyConvertedEnhancedMRImage}
    if modality not in convert:
        raise ValueError(f"modality must be CT or MR, got {modality!r}.")
    return convert[modality](legacy_datasets=sources, series_instance_uid=generate_uid(), series_number=2,
                             sop_instance_uid=generate_uid(), instance_number=1)


def _native(frames: np.ndarray, photometric: str, bits: int) -> bytes:
    if photometric == "MONOCHROME1":
        frames = (2**bits - 1) - frames
    elif photometric in ("YBR_FULL", "YBR_FULL_422"):
        frames = convert_color_space(frames, "RGB", "YBR_FULL")
        if photometric == "YBR_FULL_422":  # pairs of pixels share Cb/Cr: Y1 Y2 Cb Cr (PS3.5 8.2.1)
            packed = np.empty((*frames.shape[:2], frames.shape[2] // 2, 4), dtype=frames.dtype)
            packed[..., 0], packed[..., 1] = frames[:, :, 0::2, 0], frames[:, :, 1::2, 0]
            packed[..., 2], packed[..., 3] = frames[:, :, 0::2, 1], frames[:, :, 0::2, 2]
            frames = packed
    data = np.ascontiguousarray(frames).astype("<u2" if bits == 16 else np.uint8).tobytes()
    return data + b"\0" * (len(data) % 2)


def _jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=90, subsampling="4:2:2" if frame.ndim == 3 else 0)
    return buffer.getvalue()


def save(ds: Dataset, path: str | os.PathLike) -> str:
    """Write ``ds`` as a DICOM Part 10 file; returns the path."""
    ds.save_as(path, enforce_file_format=True)
    return str(path)
