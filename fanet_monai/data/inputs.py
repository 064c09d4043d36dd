"""Inference inputs checked before anything is written: every image is read once up front, all unreadable ones are
reported together (or skipped on request), and the output folder is checked for writing."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import nibabel as nib
import numpy as np
from monai.transforms import LoadImage

from fanet_monai.data.checks import DataCheckError, read_array
from fanet_monai.errors import InputError

__all__ = ["InputCheck", "available_memory", "check_inputs", "check_memory", "inference_bytes", "writable_dir"]

logger = logging.getLogger(__name__)
MAX_LISTED = 20


@dataclass
class InputCheck:
    """Result of :func:`check_inputs`: the items to segment and the problems of the skipped ones."""

    good: List[Dict[str, str]] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


#: float32 arrays of the image's size that refinement holds at its peak besides the image channels: the mask, the
#: network input, MONAI's sliding-window output and weight maps, the start mask's blur and histograms, the passes'
#: logits and masks. Measured (benchmarks/patch_cost.py): 1.47 GiB above baseline for a 4096² RGB image (23 maps
#: of 64 MiB, 3 of them the image), 1.45 GiB for a 256³ volume (22.6 maps).
BUFFERS_PER_VOXEL = 20


def available_memory() -> int:
    """Bytes of memory available to this process now (Linux ``sysconf``; ``0`` where unknown)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def inference_bytes(shape: Sequence[int], channels: int) -> int:
    """Estimated memory of refining one image or volume of spatial ``shape`` with ``channels`` image channels:
    ``(channels + BUFFERS_PER_VOXEL)`` float32 values per pixel/voxel (the windows' activations come on top and do
    not grow with the image)."""
    return int(np.prod([int(s) for s in shape])) * (channels + BUFFERS_PER_VOXEL) * 4


def check_memory(path: str, shape: Sequence[int], channels: int) -> None:
    """Refuse, naming the file, an image or volume whose refinement would not fit in the available memory."""
    need, have = inference_bytes(shape, channels), available_memory()
    if have and need > have:
        raise DataCheckError(
            f"{path}: a {'x'.join(map(str, shape))} input needs about {need / 2**30:.1f} GiB to refine (image, "
            f"mask and sliding-window buffers) but {have / 2**30:.1f} GiB are available; crop it or resample it to "
            "a coarser spacing first.")


def _volume_shape(path: str) -> tuple[int, ...] | None:
    """The spatial shape from a NIfTI header without reading the voxels (``None`` for other formats)."""
    if not path.endswith((".nii", ".nii.gz")):
        return None
    try:
        return tuple(int(s) for s in nib.load(path).shape[:3])
    except Exception:  # noqa: BLE001 - the full read below reports it
        return None


def _check_image(path: str, spatial_dims: int = 2) -> None:
    if spatial_dims == 3:
        header_shape = _volume_shape(path)
        if header_shape is not None:
            check_memory(path, header_shape, 1)  # before the voxels are read
        try:
            shape = tuple(LoadImage(image_only=True)(path).shape)
        except Exception as error:  # noqa: BLE001 - every reader failure means "this file cannot be used"
            raise DataCheckError(f"{path}: unreadable volume ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0] if str(error) else ''}).") from error
        if len(shape) != 3 and not (len(shape) == 4 and shape[-1] == 1):
            raise DataCheckError(f"{path}: expected a 3-D volume, got array shape {shape}.")
        check_memory(path, shape[:3], 1)
        return
    array = read_array(path)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4)):
        raise DataCheckError(f"{path}: expected a 2-D gray, RGB or RGBA image, got array shape {array.shape}.")
    check_memory(path, array.shape[:2], 3)


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
