"""Inference inputs checked before anything is written: every image is read once up front, all unreadable ones are
reported together (or skipped on request), and the output folder is checked for writing."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

from monai.transforms import LoadImage

from fanet_monai.data.checks import DataCheckError, read_array
from fanet_monai.errors import InputError

__all__ = ["InputCheck", "check_inputs", "writable_dir"]

logger = logging.getLogger(__name__)
MAX_LISTED = 20


@dataclass
class InputCheck:
    """Result of :func:`check_inputs`: the items to segment and the problems of the skipped ones."""

    good: List[Dict[str, str]] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


def _check_image(path: str, spatial_dims: int = 2) -> None:
    if spatial_dims == 3:
        try:
            shape = tuple(LoadImage(image_only=True)(path).shape)
        except Exception as error:  # noqa: BLE001 - every reader failure means "this file cannot be used"
            raise DataCheckError(f"{path}: unreadable volume ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0] if str(error) else ''}).") from error
        if len(shape) != 3 and not (len(shape) == 4 and shape[-1] == 1):
            raise DataCheckError(f"{path}: expected a 3-D volume, got array shape {shape}.")
        return
    array = read_array(path)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4)):
        raise DataCheckError(f"{path}: expected a 2-D gray, RGB or RGBA image, got array shape {array.shape}.")


def check_inputs(items: Sequence[Mapping[str, str]], skip_bad: bool = False, key: str = "image",
                 spatial_dims: int = 2) -> InputCheck:
    """Read every ``item[key]`` image before inference starts.

    Args:
        items: datalist entries ``{"image": path}``.
        skip_bad: keep going without the unreadable images (listed in a warning) instead of stopping.
        key: the image key.
        spatial_dims: 2 (images) or 3 (volumes: NIfTI, NRRD, MHA..., read with MONAI's ``LoadImage``).

    Raises:
        DataCheckError: with ``skip_bad=False``, one or more images are unreadable (all are named; nothing was
            written); with ``skip_bad=True``, none is readable.
    """
    result = InputCheck()
    for item in items:
        path = str(item[key])
        try:
            _check_image(path, spatial_dims)
        except DataCheckError as error:
            result.skipped.append(str(error))
            continue
        result.good.append(dict(item))
    if result.skipped:
        listed = result.skipped[:MAX_LISTED]
        more = f"\n  ... and {len(result.skipped) - len(listed)} more" if len(result.skipped) > len(listed) else ""
        problems = "\n  " + "\n  ".join(listed) + more
        if not skip_bad or not result.good:
            raise DataCheckError(
                f"{len(result.skipped)} of {len(items)} input images cannot be used; nothing was written. Fix or "
                f"remove them, or pass --skip_bad True to segment the others:{problems}"
            )
        message = f"skipping {len(result.skipped)} of {len(items)} input images that cannot be used:{problems}"
        logger.warning(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    return result


def writable_dir(path: str | os.PathLike) -> str:
    """Create ``path`` if needed and check that a file can be written there; raises :class:`InputError` naming the
    folder and the reason. Returns ``path``."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".fanet-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise InputError(
            f"{folder}: cannot write to the output folder ({error.strerror or error}); choose another folder or fix "
            "its permissions."
        ) from error
    return str(path)
