"""In-memory cache of the per-sample feedback masks of FANet training, run-length encoded.

Masks are addressed by a sample key, the base name of the sample's image file (:func:`sample_key`), not by the
sample's position in the data set, so the data loader may shuffle and batches may be of any size. Each mask keeps
its own shape (non-square and 3-D masks are fine).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import ImageMetaKey

from fanet_monai.feedback.rle import RLEMask, rle_decode, rle_encode

__all__ = ["FeedbackMaskCache", "UPDATE_POLICIES", "sample_key"]

UPDATE_POLICIES: tuple[str, ...] = ("every_epoch", "on_improvement")
"""``every_epoch``: the paper (every prediction replaces the sample's mask at once). ``on_improvement``: the FANet
reference code (predictions are staged and replace the masks only on :meth:`FeedbackMaskCache.commit`, which the
trainer calls when the validation loss improves)."""


def sample_key(filename_or_meta: str | os.PathLike | Mapping[str, Any] | MetaTensor) -> str:
    """Key of a sample: the base name of its image file.

    Args:
        filename_or_meta: a path, a metadata dict, or a :class:`~monai.data.MetaTensor`; for the latter two the path
            is read from ``meta["filename_or_obj"]``.

    Returns:
        ``os.path.basename`` of the path, e.g. ``"cju0qkwl35piu0993l0dewei2.jpg"``. Samples whose files share a base
        name in different folders share a key.

    Raises:
        ValueError: when no single file name is available (missing key, a collated batch's list of names, a path
            ending with a separator).
    """
    name: Any = filename_or_meta
    if isinstance(filename_or_meta, MetaTensor):
        name = filename_or_meta.meta.get(ImageMetaKey.FILENAME_OR_OBJ)
    elif isinstance(filename_or_meta, Mapping):
        name = filename_or_meta.get(ImageMetaKey.FILENAME_OR_OBJ)
    if not isinstance(name, (str, os.PathLike)):
        raise ValueError(
            f"no file name to key the sample by: expected a path or metadata with a '{ImageMetaKey.FILENAME_OR_OBJ}'"
            f" path, got {type(name).__name__} (decollate a batch first to get one name per sample)."
        )
    key = os.path.basename(os.fspath(name))
    if not key:
        raise ValueError(f"path {name!r} has no file name.")
    return key


class FeedbackMaskCache:
    """Binary masks per sample, stored run-length encoded (:mod:`fanet_monai.feedback.rle`).

    Args:
        update_policy: ``"every_epoch"`` (default, the paper): :meth:`put` replaces the stored mask at once.
            ``"on_improvement"`` (the reference code): :meth:`put` stages the mask; :meth:`commit` moves all staged
            masks into the cache, :meth:`discard` drops them. :meth:`get` only ever returns committed masks.

    Immediate writes are safe for ``every_epoch``: data-loader workers read the copy of the cache they received
    when they were started (``persistent_workers=False`` starts them every epoch), so a prediction written during
    epoch ``e`` is seen from epoch ``e + 1`` on, never in the middle of an epoch. With ``persistent_workers=True``
    the workers would keep a stale copy forever: read the cache in the main process instead (e.g. in the
    trainer's ``prepare_batch``).

    The cache is a plain Python object: it pickles (worker processes, ``all_gather_object``), and
    :meth:`state_dict` gives builtins and bytes only, loadable with ``torch.load(weights_only=True)``. It has no lock;
    write to it from one thread. For distributed training, every rank can send the masks it wrote
    (:meth:`export_updates`) to the others, which apply them with :meth:`merge_updates`.
    """

    def __init__(self, update_policy: str = "every_epoch") -> None:
        if update_policy not in UPDATE_POLICIES:
            raise ValueError(f"update_policy must be one of {UPDATE_POLICIES}, got {update_policy!r}.")
        self.update_policy = update_policy
        self._masks: dict[str, RLEMask] = {}
        self._pending: dict[str, RLEMask] = {}
        self._dirty: set[str] = set()

    # ----------------------------------------------------------------------------------------- mapping interface
    def __contains__(self, key: object) -> bool:
        return key in self._masks

    def __len__(self) -> int:
        return len(self._masks)

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def keys(self) -> list[str]:
        """Keys of the committed masks."""
        return list(self._masks)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(update_policy={self.update_policy!r}, masks={len(self)}, pending={self.pending},"
            f" nbytes={self.nbytes}, raw_nbytes={self.raw_nbytes})"
        )

    # ------------------------------------------------------------------------------------------- read and write
    def get(self, key: str) -> np.ndarray | None:
        """The committed mask of ``key`` as a uint8 0/1 array of the shape it was put with, or ``None``."""
        rle = self._masks.get(key)
        return None if rle is None else rle_decode(rle)

    def latest(self, key: str) -> np.ndarray | None:
        """The newest mask of ``key``: the staged one (``on_improvement``) if there is one, else the committed one.
        A prediction that covers part of the image (a patch) is merged into this one."""
        rle = self._pending.get(key, self._masks.get(key))
        return None if rle is None else rle_decode(rle)

    def put(self, key: str, mask: np.ndarray | torch.Tensor) -> None:
        """Store (``every_epoch``) or stage (``on_improvement``) the mask of ``key``.

        Args:
            key: sample key, see :func:`sample_key`.
            mask: array or tensor of any shape, e.g. ``(1, H, W)``; floating-point values are binarized with
                ``> 0.5`` (probabilities), any other dtype with ``!= 0``.
        """
        if isinstance(mask, torch.Tensor):
            binary = mask > 0.5 if mask.is_floating_point() else mask != 0  # also covers bfloat16, unknown to numpy
        else:
            mask = np.asarray(mask)
            binary = mask > 0.5 if np.issubdtype(mask.dtype, np.floating) else mask != 0
        rle = rle_encode(binary)
        if self.update_policy == "every_epoch":
            self._masks[key] = rle
            self._dirty.add(key)
        else:
            self._pending[key] = rle

    @property
    def pending(self) -> int:
        """Number of staged masks (always 0 for ``every_epoch``)."""
        return len(self._pending)

    def commit(self) -> int:
        """Move the staged masks into the cache; returns how many were committed."""
        count = len(self._pending)
        self._masks.update(self._pending)
        self._dirty.update(self._pending)
        self._pending.clear()
        return count

    def discard(self) -> int:
        """Drop the staged masks; returns how many were dropped."""
        count = len(self._pending)
        self._pending.clear()
        return count

    def clear(self) -> None:
        """Remove all masks, staged ones included."""
        self._masks.clear()
        self._pending.clear()
        self._dirty.clear()

    # -------------------------------------------------------------------------------------------------- sizes
    @property
    def nbytes(self) -> int:
        """Bytes of the encoded run lengths of all masks, committed and staged."""
        return sum(rle.nbytes for rle in (*self._masks.values(), *self._pending.values()))

    @property
    def raw_nbytes(self) -> int:
        """Bytes the same masks would take as uint8 arrays."""
        return sum(math.prod(rle.shape) for rle in (*self._masks.values(), *self._pending.values()))

    # ----------------------------------------------------------------------------------- distributed training
    def export_updates(self) -> dict[str, dict[str, Any]]:
        """``{key: RLE dict}`` of the masks committed since the previous call (for all-gathering across ranks).

        With ``on_improvement``, call it after :meth:`commit`: staged masks are not exported.
        """
        updates = {key: self._masks[key].to_dict() for key in sorted(self._dirty) if key in self._masks}
        self._dirty.clear()
        return updates

    def merge_updates(self, updates: Mapping[str, Mapping[str, Any]]) -> None:
        """Commit masks exported by another cache (:meth:`export_updates`); they are not exported again."""
        for key, rle in updates.items():
            self._masks[key] = RLEMask.from_dict(rle)
            self._dirty.discard(key)

    # --------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Builtins and bytes only: ``{"update_policy", "masks", "pending", "dirty"}``, with RLE dicts as masks."""
        return {
            "update_policy": self.update_policy,
            "masks": {key: rle.to_dict() for key, rle in self._masks.items()},
            "pending": {key: rle.to_dict() for key, rle in self._pending.items()},
            "dirty": sorted(self._dirty),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the content of this cache by that of :meth:`state_dict`'s output (policy included)."""
        policy = state.get("update_policy", self.update_policy)
        if policy not in UPDATE_POLICIES:
            raise ValueError(f"update_policy must be one of {UPDATE_POLICIES}, got {policy!r}.")
        self.update_policy = policy
        self._masks = {key: RLEMask.from_dict(rle) for key, rle in state.get("masks", {}).items()}
        self._pending = {key: RLEMask.from_dict(rle) for key, rle in state.get("pending", {}).items()}
        self._dirty = set(state.get("dirty", ())) & set(self._masks)
