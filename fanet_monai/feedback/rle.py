"""Run-length codec for binary masks of any shape.

A mask is flattened in C (row-major) order and stored as the lengths of its alternating runs, starting with a run
of background (zero) pixels, which has length 0 when the first pixel is foreground::

    [0, 0, 1, 1, 1, 0, 1]  ->  runs [2, 3, 1, 1]
    [1, 1, 0]              ->  runs [0, 2, 1]

The run lengths are kept as a little-endian numpy array of the smallest unsigned integer type that holds the
longest run (:func:`numpy.min_scalar_type`), serialised with ``tobytes()``. Encoding and decoding are vectorised
(``numpy.flatnonzero`` / ``numpy.diff`` / ``numpy.repeat``); there is no per-pixel Python loop.

Unlike the Kaggle-style codec of the FANet reference code (column-major, 1-based starts, square images only), the
round trip here is exact for any shape, including ``1 x N``, non-square, 3-D and empty (size 0) masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import numpy.typing as npt
import torch
from monai.utils import convert_to_numpy

__all__ = ["RLEMask", "rle_encode", "rle_decode"]


@dataclass(frozen=True)
class RLEMask:
    """A run-length encoded binary mask.

    Attributes:
        shape: shape of the original mask, e.g. ``(H, W)`` or ``(1, H, W)`` or ``(D, H, W)``.
        runs: alternating background/foreground run lengths (background first) in C order, serialised with
            ``numpy.ndarray.tobytes()``.
        dtype: numpy type string of ``runs``, always little-endian unsigned (``"|u1"``, ``"<u2"``, ``"<u4"`` or
            ``"<u8"``), so the bytes decode identically on every machine.

    Instances are immutable, picklable, and convert to and from a dict of builtins and bytes (:meth:`to_dict`,
    :meth:`from_dict`) that survives ``torch.save`` / ``torch.load(weights_only=True)`` and
    ``torch.distributed.all_gather_object``.
    """

    shape: tuple[int, ...]
    runs: bytes
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if any(s < 0 for s in self.shape):
            raise ValueError(f"shape must be non-negative, got {self.shape}.")
        kind = np.dtype(self.dtype)
        if kind.kind != "u":
            raise ValueError(f"dtype must be an unsigned integer type, got {self.dtype!r}.")
        if len(self.runs) % kind.itemsize:
            raise ValueError(f"runs holds {len(self.runs)} bytes, not a multiple of the {kind} item size.")

    @property
    def nbytes(self) -> int:
        """Number of bytes of the encoded run lengths."""
        return len(self.runs)

    @property
    def size(self) -> int:
        """Number of pixels of the original mask."""
        return math.prod(self.shape)

    @property
    def run_lengths(self) -> np.ndarray:
        """The run lengths as a read-only 1-D unsigned integer array (background run first)."""
        return np.frombuffer(self.runs, dtype=np.dtype(self.dtype))

    @property
    def foreground(self) -> int:
        """Number of foreground pixels."""
        return int(self.run_lengths[1::2].sum(dtype=np.int64))

    def to_dict(self) -> dict[str, Any]:
        """Plain ``{"shape": list[int], "runs": bytes, "dtype": str}``, safe for ``torch.load(weights_only=True)``."""
        return {"shape": list(self.shape), "runs": self.runs, "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RLEMask:
        """Inverse of :meth:`to_dict`. ``runs`` may be ``bytes``, ``bytearray`` or a ``uint8`` tensor/array."""
        runs = data["runs"]
        if not isinstance(runs, (bytes, bytearray)):
            runs = convert_to_numpy(runs, dtype=np.uint8).tobytes()
        return cls(shape=tuple(data["shape"]), runs=bytes(runs), dtype=str(data["dtype"]))


def rle_encode(mask: np.ndarray | torch.Tensor) -> RLEMask:
    """Run-length encode a binary mask.

    Args:
        mask: array or tensor of any shape (e.g. ``(H, W)``, ``(1, H, W)``, ``(D, H, W)``) and any dtype; every
            nonzero value is foreground. Tensors may live on any device (they are copied to the CPU).

    Returns:
        the :class:`RLEMask` of ``mask``; :func:`rle_decode` restores it exactly.
    """
    flat = convert_to_numpy(mask).reshape(-1) != 0
    if flat.size == 0:
        lengths = np.zeros(0, dtype=np.int64)
    else:
        # positions where the value changes, bracketed by the start and the end of the mask
        bounds = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]))
        lengths = np.diff(bounds)
        if flat[0]:  # the first run must be background: give it length 0
            lengths = np.concatenate(([0], lengths))
    dtype = np.min_scalar_type(int(lengths.max(initial=0))).newbyteorder("<")
    return RLEMask(shape=tuple(np.shape(mask)), runs=lengths.astype(dtype).tobytes(), dtype=dtype.str)


def rle_decode(rle: RLEMask, dtype: npt.DTypeLike = np.uint8) -> np.ndarray:
    """Decode an :class:`RLEMask`.

    Args:
        rle: the encoded mask.
        dtype: output type, ``numpy.uint8`` (default, values 0/1) or ``bool`` for instance.

    Returns:
        array of shape ``rle.shape`` with 1 (``True``) for foreground, 0 (``False``) for background.

    Raises:
        ValueError: when the run lengths do not add up to the number of pixels of ``rle.shape``.
    """
    lengths = rle.run_lengths.astype(np.intp)
    total = int(lengths.sum())
    if total != rle.size:
        raise ValueError(f"run lengths add up to {total} pixels, but shape {rle.shape} has {rle.size}.")
    values = (np.arange(lengths.size) % 2).astype(dtype)  # 0, 1, 0, 1, ... (background first)
    return np.repeat(values, lengths).reshape(rle.shape)
