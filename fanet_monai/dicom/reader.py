"""Reading 2-D DICOM images the way the bundle reads bitmaps: a MONAI ``ImageReader`` for ``LoadImage(d)``.

:class:`DicomReader` decodes one frame of a DICOM image with pydicom 3 (JPEG baseline/extended/lossless through the
``pylibjpeg-libjpeg`` plugin, JPEG 2000 through ``pylibjpeg-openjpeg``, RLE natively) and hands MONAI the same
array layout :class:`~fanet_monai.data.readers.BitmapReader` gives for a PNG of the same pixels:

- colour (``RGB``, ``YBR_FULL``, ``YBR_FULL_422``): RGB, ``(W, H, 3)`` with ``reverse_indexing`` (MONAI's PIL
  convention, the default) — pydicom converts YBR to RGB (ITU-R BT.601 full range, as DICOM defines it);
- ``MONOCHROME2``: ``(W, H)``; ``MONOCHROME1`` (0 = white) is inverted to ``MONOCHROME2``;
- the stored type (``uint8`` / ``uint16``) is kept and recorded in ``meta["source_dtype"]``, so
  :class:`~fanet_monai.transforms.ScaleToUnitd` scales 8-bit by 255 exactly as for a PNG.

A multi-frame instance gives one image per frame: construct the reader with ``frame=k`` (0-based); with
``frame=None`` a multi-frame instance is rejected with a message saying so. :func:`check_source` names what makes
an instance unusable (no pixel data, a SEG/SR/RTSTRUCT object, an undecodable transfer syntax, ...) before any
decoding or inference is spent on it.

In a bundle config (single-frame files)::

    "reader": "fanet_monai.dicom.DicomReader"   # in LoadImaged, instead of BitmapReader
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from monai.data import ImageReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.utils import MetaKeys, ensure_tuple
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder

__all__ = ["DicomReader", "SourceError", "check_source", "looks_like_dicom", "number_of_frames", "read_header",
           "truncation", "PHOTOMETRIC"]

#: Photometric interpretations the reader turns into the bundle's gray/RGB input.
PHOTOMETRIC: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422")

#: SOP classes that carry pixel data but are not images to segment (their own pixels are results).
_NOT_SOURCES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a Segmentation (SEG) object",
    "1.2.840.10008.5.1.4.1.1.30": "a Parametric Map object",
    "1.2.840.10008.5.1.4.1.1.481.2": "an RT Dose object",
}
#: File name suffixes of DICOM files (files without one are DICOM when they hold the ``DICM`` marker).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
#: Length of a data element header (explicit VR, long form); fewer unread bytes at the end of a file without
#: pixel data mean an element header cut off.
_ELEMENT_HEADER = 12
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: (FFFE,E0DD) with length 0, little endian: ends encapsulated pixel data.
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"

#: Modalities of non-image objects, for the message when such an instance has no pixel data.
_NON_IMAGE_MODALITIES = {"SR": "a Structured Report (SR)", "RTSTRUCT": "an RT Structure Set (RTSTRUCT)",
                         "SEG": "a Segmentation (SEG) object", "KO": "a Key Object Selection document",
                         "PR": "a Presentation State", "DOC": "an encapsulated document"}


class SourceError(ValueError):
    """A DICOM instance that cannot be segmented; ``str()`` is one line: file, SOP Instance UID and reason."""

    def __init__(self, reason: str, sop_instance_uid: str | None = None, path: str | os.PathLike | None = None):
        self.reason, self.sop_instance_uid, self.path = reason, sop_instance_uid, path
        where = [f"{path}" if path else None, f"SOP Instance UID {sop_instance_uid}" if sop_instance_uid else None]
        super().__init__(": ".join([w for w in where if w] + [reason]))


def read_header(path: str | os.PathLike) -> Dataset:
    """The dataset of a DICOM file with large values (the pixel data) deferred; raises :class:`SourceError` naming
    the file when it is not readable DICOM."""
    try:
        return pydicom.dcmread(path, defer_size="64 KB")
    except Exception as error:  # pydicom raises InvalidDicomError, EOFError, struct.error, ... on broken files
        raise SourceError(f"not a readable DICOM file ({type(error).__name__}: {error})", None, path) from error


def looks_like_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` is meant to be a DICOM file: a ``.dcm``/``.dicom`` name, or the ``DICM`` marker at byte 128
    (a Part 10 file of any name). A broken file that passes is a failed source; one that does not is ignored."""
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def truncation(ds: Dataset) -> str | None:
    """Why the file ``ds`` was read from (``ds.filename``) ends before the data set it declares, or ``None``.

    pydicom stops quietly at the end of a file: a file cut inside an element gives that element's value short
    (or, deferred, a declared length beyond the end), a file cut after its file meta information gives an empty
    data set, a file cut inside an element header ends a few bytes after its last element. Only the last element
    can be cut, so only it is measured (without loading a deferred value)."""
    filename = getattr(ds, "filename", None)
    meta = getattr(ds, "file_meta", None)
    if not isinstance(filename, (str, os.PathLike)) or not Path(filename).is_file():
        return None
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_deflated:  # offsets are in the inflated stream, not the file
        return None
    size = Path(filename).stat().st_size
    if len(ds) == 0:
        return f"is truncated: the file ends ({size} bytes) before its pixel data"
    tag = max(ds.keys())
    last = ds.get_item(tag, keep_deferred=True)
    if not isinstance(last, RawDataElement) or last.value_tell is None:
        return None
    if last.length == _UNDEFINED_LENGTH:  # encapsulated: items, then the sequence delimiter ends the file
        with open(filename, "rb") as f:
            f.seek(max(size - len(_SEQUENCE_DELIMITER), 0))
            end = size if f.read() == _SEQUENCE_DELIMITER else size + 1
    else:
        end = last.value_tell + last.length
    if end > size and tag == 0x7FE00010:
        present = max(size - last.value_tell, 0)
        declared = "no sequence delimiter" if last.length == _UNDEFINED_LENGTH else f"{last.length} declared"
        return f"is truncated: the file ends inside its pixel data ({present} bytes present, {declared})"
    if end > size or ("PixelData" not in ds and 0 < size - end < _ELEMENT_HEADER):
        return f"is truncated: the file ends ({size} bytes) before its pixel data"
    return None


def _native_length_problem(ds: Dataset) -> str | None:
    """Why the native (uncompressed) PixelData of ``ds`` does not hold exactly ``Rows × Columns × Samples per Pixel
    × Number of Frames × bytes per sample`` bytes (plus one padding byte for an odd length), or ``None``."""
    element = ds.get_item("PixelData", keep_deferred=True)
    if isinstance(element, RawDataElement):
        length = element.length if element.value is None else len(element.value)
    else:
        length = len(element.value or b"")
    rows, columns, samples = int(ds.Rows), int(ds.Columns), int(ds.SamplesPerPixel)
    frames, nbytes = number_of_frames(ds), int(ds.BitsAllocated) // 8
    expected = rows * columns * samples * frames * nbytes
    formula = f"{rows} × {columns} × {samples} × {frames} × {nbytes}"
    if ds.PhotometricInterpretation == "YBR_FULL_422":  # two pixels share one Cb and one Cr: Y Y Cb Cr
        expected, formula = expected // 3 * 2, f"{formula} × 2/3 (YBR_FULL_422)"
    if length in (expected, expected + expected % 2):
        return None
    return (f"PixelData holds {length} bytes, but Rows × Columns × Samples per Pixel × Number of Frames × bytes "
            f"per sample = {formula} = {expected}: the header does not describe the pixels; export the image "
            "again (or correct its Rows, Columns, Number of Frames)")


def number_of_frames(ds: Dataset) -> int:
    """``NumberOfFrames`` (1 when absent or empty)."""
    value = ds.get("NumberOfFrames")
    return int(value) if value not in (None, "") else 1


def check_source(ds: Dataset, path: str | os.PathLike | None = None) -> None:
    """Raise :class:`SourceError` (naming the file, the SOP Instance UID and the reason) unless ``ds`` is a 2-D
    image this project can segment: pixel data present, not a SEG/SR/RTSTRUCT-like object, 1 (gray) or 3 (colour)
    samples of 8 or 16 bits, a photometric interpretation in :data:`PHOTOMETRIC`, a transfer syntax that pydicom
    can decode with the installed plugins, a file that is not cut short (:func:`truncation`) and, uncompressed,
    exactly the pixel data the header describes. Reads only the header."""
    uid = ds.get("SOPInstanceUID")

    def fail(reason: str) -> SourceError:
        return SourceError(reason, uid, path)

    cut = truncation(ds)
    if cut:
        raise fail(f"{cut}; copy or export it again")

    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", ""))
    if sop_class in _NOT_SOURCES:
        raise fail(f"is {_NOT_SOURCES[sop_class]}, not an image to segment")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        what = _NON_IMAGE_MODALITIES.get(modality)
        raise fail(f"is {what}, not an image" if what else "has no PixelData: not an image")
    if "PixelData" not in ds:
        raise fail("has float pixel data; only integer images (8/16 bit) are supported")
    if modality in _NON_IMAGE_MODALITIES:
        raise fail(f"is {_NON_IMAGE_MODALITIES[modality]}, not an image to segment")
    try:
        syntax = ds.file_meta.TransferSyntaxUID
    except AttributeError:
        raise fail("has no Transfer Syntax UID in its file meta information") from None
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise fail(f"transfer syntax {syntax} ({syntax.name}) is not supported: no pixel data decoder for it; "
                   "convert it to an uncompressed or JPEG transfer syntax") from None
    if not decoder.is_available:
        raise fail(f"transfer syntax {syntax} ({syntax.name}) needs a decoder plugin that is not installed "
                   "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)")
    samples = ds.get("SamplesPerPixel")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in PHOTOMETRIC:
        raise fail(f"photometric interpretation {photometric or '(missing)'} is not supported "
                   f"(supported: {', '.join(PHOTOMETRIC)})")
    if samples != (1 if photometric.startswith("MONOCHROME") else 3):
        raise fail(f"{samples} samples per pixel do not fit photometric interpretation {photometric}")
    if ds.get("BitsAllocated") not in (8, 16):
        raise fail(f"{ds.get('BitsAllocated')} bits allocated; only 8 and 16 bit images are supported")
    if not ds.get("Rows") or not ds.get("Columns"):
        raise fail("has no Rows/Columns")
    if not syntax.is_encapsulated:
        mismatch = _native_length_problem(ds)
        if mismatch:
            raise fail(mismatch)
    if not uid:
        raise fail("has no SOP Instance UID: a SEG could not reference it")


class DicomReader(ImageReader):
    """MONAI ``ImageReader`` for one frame of a 2-D DICOM image (see the module doc for the conversions).

    Args:
        frame: 0-based frame of a multi-frame instance; ``None`` accepts single-frame instances only.
        reverse_indexing: ``(W, H)`` spatial order like MONAI's ``PILReader`` (default, what the bundle's
            ``BitmapReader`` gives); ``False`` keeps DICOM's ``(Rows, Columns)``.
    """

    def __init__(self, frame: int | None = None, reverse_indexing: bool = True) -> None:
        super().__init__()
        self.frame = frame
        self.reverse_indexing = reverse_indexing

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """``.dcm``/``.dicom`` files, or files without a suffix holding the ``DICM`` preamble marker."""
        for name in ensure_tuple(filename):
            suffix = Path(name).suffix.lower()
            if suffix in (".dcm", ".dicom"):
                continue
            if suffix == "" and Path(name).is_file():
                with open(name, "rb") as f:
                    if f.read(132)[128:] == b"DICM":
                        continue
            return False
        return True

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Dataset | list[Dataset]:
        """Header of each file, checked by :func:`check_source` (pixel data decoded in :meth:`get_data`)."""
        datasets = []
        for name in ensure_tuple(data):
            ds = read_header(name)
            check_source(ds, name)
            frames = number_of_frames(ds)
            if self.frame is None and frames > 1:
                raise SourceError(f"has {frames} frames; read it frame by frame (DicomReader(frame=k))",
                                  ds.get("SOPInstanceUID"), name)
            if self.frame is not None and not 0 <= self.frame < frames:
                raise SourceError(f"has {frames} frame(s), frame {self.frame} requested", ds.SOPInstanceUID, name)
            datasets.append(ds)
        return datasets if len(datasets) > 1 else datasets[0]

    def get_data(self, img: Dataset | list[Dataset]) -> tuple[np.ndarray, dict]:
        """``(array, meta)``: the frame as ``(W, H)`` / ``(W, H, 3)`` (``reverse_indexing``) in its stored type."""
        arrays, meta = [], {}
        for ds in img if isinstance(img, (list, tuple)) else [img]:
            array = decode_frame(ds, self.frame)
            header = {
                "SOPInstanceUID": str(ds.SOPInstanceUID),
                "SOPClassUID": str(ds.SOPClassUID),
                "frame": self.frame or 0,
                "source_dtype": str(array.dtype),
                MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[:2][::-1] if self.reverse_indexing else array.shape[:2]),
            }
            data = np.moveaxis(array, 0, 1) if self.reverse_indexing else array
            header[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if data.ndim == 2 else -1
            arrays.append(data)
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta


def decode_frame(ds: Dataset, frame: int | None = None) -> np.ndarray:
    """Pixels of one frame (0-based; ``None`` = the only one) as ``(Rows, Columns)`` (gray, MONOCHROME1 inverted) or
    ``(Rows, Columns, 3)`` RGB (YBR converted), in the stored integer type; only that frame is decoded (pydicom's
    ``Decoder.as_array(index=)``). Raises :class:`SourceError` when the pixel data cannot be decoded."""
    try:
        decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
        array, _ = decoder.as_array(ds, index=frame or 0, as_rgb=True)
    except Exception as error:  # truncated or corrupt pixel data: decoders raise many types
        detail = " ".join(str(error).split())  # one line: plugins list their errors on several
        raise SourceError(f"pixel data cannot be decoded ({type(error).__name__}: {detail})",
                          ds.get("SOPInstanceUID"), getattr(ds, "filename", None)) from error
    if ds.PhotometricInterpretation == "MONOCHROME1":  # 0 = white: make it MONOCHROME2
        if ds.get("PixelRepresentation", 0) == 0:
            array = (2 ** int(ds.BitsStored) - 1) - array
        else:
            array = np.invert(array)
    return np.ascontiguousarray(array)
