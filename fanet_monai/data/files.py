"""Image files: the accepted suffixes, a file's stem and suffix, and the images of a folder by stem.

One list of suffixes for the whole project: datalists, readers, data checks and dataset layouts all use these.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from fanet_monai.errors import InputError

__all__ = [
    "BITMAP_SUFFIXES",
    "DataCheckError",
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "VOLUME_SUFFIXES",
    "file_stem",
    "file_suffix",
    "image_files",
    "natural_key",
    "raise_problems",
]

#: problems listed in one error message; the rest are counted
MAX_LISTED_PROBLEMS = 20

#: 2-D bitmaps, read with :class:`~fanet_monai.data.readers.BitmapReader` (PIL, ITK for TIFFs PIL cannot read)
BITMAP_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
#: NIfTI volumes and slices
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
#: every accepted image or mask file
IMAGE_SUFFIXES: tuple[str, ...] = BITMAP_SUFFIXES + NIFTI_SUFFIXES
#: 3-D volumes (:mod:`fanet_monai.data.volumes`): NIfTI, NRRD and MetaImage, each in one file
VOLUME_SUFFIXES: tuple[str, ...] = NIFTI_SUFFIXES + (".nrrd", ".mha")


class DataCheckError(InputError):
    """A dataset problem; the message starts with the file (or files) concerned."""


def raise_problems(errors: List[str]) -> None:
    """Raise one :class:`DataCheckError` for all ``errors`` (messages naming their files), if there are any."""
    if not errors:
        return
    if len(errors) == 1:
        raise DataCheckError(errors[0])
    listed = errors[:MAX_LISTED_PROBLEMS]
    more = f"\n  ... and {len(errors) - len(listed)} more" if len(errors) > len(listed) else ""
    raise DataCheckError(f"{len(errors)} problems in the dataset:\n  " + "\n  ".join(listed) + more)


def file_suffix(path: str | os.PathLike) -> str:
    """Lower-case suffix of ``path``, ``".nii.gz"`` for gzipped NIfTI (``""`` if there is none)."""
    name = os.path.basename(os.fspath(path)).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def file_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``a.nii.gz`` → ``a``; any other suffix is dropped too), case kept."""
    name = os.path.basename(os.fspath(path))
    suffix = file_suffix(name)
    return name[: -len(suffix)] if suffix else name


def natural_key(text: str) -> Tuple:
    """Sort key that orders numbers by value (``img2`` before ``img10``), case-insensitive."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


def image_files(
    folder: str | os.PathLike, natural: bool = False, suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> Dict[str, Path]:
    """``{stem: path}`` of the image files (``suffixes``, :data:`IMAGE_SUFFIXES` by default) of ``folder``, hidden
    files (and macOS ``._*`` files) skipped, sorted by name (``natural``: by :func:`natural_key`).

    Raises:
        DataCheckError: two files with the same stem (e.g. ``a.png`` and ``a.jpg``), naming both.
    """
    files: Dict[str, Path] = {}
    paths = sorted(Path(folder).iterdir(), key=(lambda p: natural_key(p.name)) if natural else None)
    for path in paths:
        if not path.is_file() or path.name.startswith(".") or file_suffix(path) not in suffixes:
            continue
        stem = file_stem(path)
        if stem in files:
            raise DataCheckError(f"{path}: duplicate stem {stem!r} (also {files[stem].name}); file names must be unique.")
        files[stem] = path
    return files
