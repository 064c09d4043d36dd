"""What a volume file says about itself, read cheaply: the header (shape, channels, RAS affine, stored dtype) without
the voxels, the last voxel (a truncated file fails there), and all voxels of a label (its class codes).

NIfTI goes through nibabel (``load(...)`` reads the header; ``dataobj`` reads voxels on demand). NRRD and MetaImage
go through ITK: ``ImageIO.ReadImageInformation()`` reads the header only; ``itk.imread`` the voxels. ITK's LPS
geometry is turned into a RAS affine as MONAI's ``ITKReader`` does, so a NIfTI label of an NRRD image compares.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import itk
import nibabel as nib
import numpy as np

from fanet_monai.data.files import NIFTI_SUFFIXES, VOLUME_SUFFIXES, DataCheckError, file_suffix

__all__ = ["VolumeHeader", "is_volume_file", "read_label_voxels", "read_last_voxel", "read_volume_header"]

#: ITK component type names (``ImageIOBase.GetComponentTypeAsString``) → numpy dtype names, for the report
_ITK_DTYPES = {"unsigned_char": "uint8", "char": "int8", "unsigned_short": "uint16", "short": "int16",
               "unsigned_int": "uint32", "int": "int32", "unsigned_long": "uint64", "long": "int64",
               "unsigned_long_long": "uint64", "long_long": "int64", "float": "float32", "double": "float64"}
#: LPS (ITK) → RAS (NIfTI, MONAI): x and y flipped
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class VolumeHeader:
    """One file's geometry from its header.

    Attributes:
        path: the file.
        dims: the stored array shape without channels: ``(X, Y, Z)`` for a volume, fewer entries (or a 1) for a 2-D
            image.
        channels: image channels (a 4-D NIfTI's 4th dimension, an ITK vector pixel's components), 1 for a volume.
        affine: ``(4, 4)`` voxel → RAS world (mm).
        dtype: the stored voxel type (``float32``, ``uint8``...).
    """

    path: str
    dims: tuple[int, ...]
    channels: int
    affine: np.ndarray
    dtype: str

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel sizes in mm, one per spatial axis (from the affine's columns)."""
        return tuple(float(s) for s in nib.affines.voxel_sizes(self.affine))

    @property
    def shape(self) -> str:
        """``"32x32x16"`` (``"x4"`` appended for 4 channels), for messages."""
        text = "x".join(map(str, self.dims))
        return f"{text}x{self.channels}" if self.channels > 1 else text


def is_volume_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a volume suffix (:data:`~fanet_monai.data.files.VOLUME_SUFFIXES`: ``.nii``, ``.nii.gz``,
    ``.nrrd``, ``.mha``); the header decides whether it really is 3-D."""
    return file_suffix(path) in VOLUME_SUFFIXES


def _unreadable(path: str, error: Exception, voxels: bool = False) -> DataCheckError:
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    what = "voxel data (the header reads)" if voxels else "volume header"
    return DataCheckError(f"{path}: unreadable {what}: {type(error).__name__}: {detail}; the file is corrupt, "
                          "truncated or not a volume: export or download it again, or remove it from the dataset.")


def _split_channels(path: str, shape: tuple[int, ...], components: int = 1) -> tuple[tuple[int, ...], int]:
    """Spatial dims and channels of a stored shape: dims after the third are channels (singletons dropped)."""
    extra = [s for s in shape[3:] if s != 1]
    if len(extra) > 1:
        raise DataCheckError(f"{path}: array shape {tuple(shape)} has more than one non-spatial dimension (time "
                             "series?); give one 3-D (or 3-D + channels) volume per file.")
    return tuple(int(s) for s in shape[:3]), int(extra[0] if extra else 1) * components


def _nifti_header(path: str) -> VolumeHeader:
    image = nib.load(path)
    dims, channels = _split_channels(path, tuple(image.shape))
    return VolumeHeader(path, dims, channels, np.asarray(image.affine, float), str(image.header.get_data_dtype()))


def _itk_header(path: str) -> VolumeHeader:
    io = itk.ImageIOFactory.CreateImageIO(path, itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        raise ValueError("no ITK reader accepts this file")
    io.SetFileName(path)
    io.ReadImageInformation()
    n = io.GetNumberOfDimensions()
    shape = tuple(int(io.GetDimensions(i)) for i in range(n))
    dims, channels = _split_channels(path, shape, int(io.GetNumberOfComponents()))
    k = len(dims)
    affine = np.eye(4)
    for i in range(k):
        affine[:k, i] = np.asarray(io.GetDirection(i), float)[:k] * io.GetSpacing(i)
        affine[i, 3] = io.GetOrigin(i)
    dtype = io.GetComponentTypeAsString(io.GetComponentType())
    return VolumeHeader(path, dims, channels, _LPS_TO_RAS @ affine, _ITK_DTYPES.get(dtype, dtype))


def read_volume_header(path: str | os.PathLike) -> VolumeHeader:
    """The header of a volume file, without its voxels.

    Raises:
        DataCheckError: naming ``path``: not found, not a volume suffix, or an unreadable header.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise DataCheckError(f"{path}: file not found.")
    if not is_volume_file(path):
        raise DataCheckError(f"{path}: not a volume file ({file_suffix(path) or 'no suffix'}); volumes are "
                             f"{', '.join(VOLUME_SUFFIXES)}: convert it or remove it from the dataset.")
    try:
        return _nifti_header(path) if file_suffix(path) in NIFTI_SUFFIXES else _itk_header(path)
    except DataCheckError:
        raise
    except Exception as error:
        raise _unreadable(path, error) from error


def read_last_voxel(path: str | os.PathLike) -> None:
    """Read the last stored voxel of a NIfTI file (nothing for NRRD/MetaImage): a file whose voxel data is cut off
    fails here although its header reads. A ``.nii.gz`` is decompressed up to its end on the way (time, not memory).

    Raises:
        DataCheckError: naming ``path``: truncated or corrupt voxel data.
    """
    path = str(path)
    if file_suffix(path) not in NIFTI_SUFFIXES:
        return
    try:
        proxy = nib.load(path).dataobj
        proxy[(-1,) * len(proxy.shape)]
    except Exception as error:
        raise _unreadable(path, error, voxels=True) from error


def read_label_voxels(path: str | os.PathLike) -> np.ndarray:
    """All voxels of a label file in their stored type (array axes as stored; only the values matter here).

    Raises:
        DataCheckError: naming ``path``: truncated or corrupt voxel data.
    """
    path = str(path)
    try:
        if file_suffix(path) in NIFTI_SUFFIXES:
            return np.asanyarray(nib.load(path).dataobj)
        return np.asarray(itk.array_from_image(itk.imread(path)))
    except Exception as error:
        raise _unreadable(path, error, voxels=True) from error
