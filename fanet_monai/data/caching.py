"""The training and validation datasets, with the deterministic part of their transforms cached (MONAI's
``CacheDataset`` in memory or ``PersistentDataset`` on disk) and the feedback mask never cached.

``train.json`` builds both datasets with :func:`preprocessed_dataset` (``dataset_cache``: ``"none"`` for 2-D images,
which are cheap to load; ``volume.json`` sets ``"memory"``: a volume is reoriented, resampled and cropped once).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import json_hashing
from monai.transforms import Compose, RandomizableTrait, Transform

from fanet_monai.errors import InputError

__all__ = ["CACHE_MODES", "cached_prefix", "preprocessed_dataset"]

logger = logging.getLogger(__name__)

#: where the preprocessed items are kept: nowhere, in memory, on disk
CACHE_MODES: tuple[str, ...] = ("none", "memory", "disk")


# ------------------------------------------------------------------------------------------------------ caching
def cached_prefix(transform: Compose) -> int:
    """How many transforms of ``transform.flatten()`` a MONAI caching dataset runs once and keeps: those before the
    first random one (``RandomizableTrait``: ``FeedbackMaskd`` is one, so the feedback mask is never cached) or the
    first that is not a MONAI ``Transform``."""
    flat = transform.flatten().transforms
    return next((i for i, t in enumerate(flat) if isinstance(t, RandomizableTrait) or not isinstance(t, Transform)),
                len(flat))


def preprocessed_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Compose,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
    num_workers: int | None = 1,
    progress: bool = True,
) -> Dataset:
    """The training or validation dataset, with the preprocessed volumes cached according to ``cache``:

    - ``"memory"`` (the default): MONAI ``CacheDataset``: every volume is loaded, reoriented, resampled, scaled and
      cropped once, before the first epoch, and kept in memory. Without a cache each volume is read and resampled
      again every epoch, which costs more than the network on small sets; small sets (hippocampus: 260 volumes of
      about 35x50x35 voxels, well under 100 MB preprocessed) fit easily.
    - ``"disk"``: MONAI ``PersistentDataset`` under ``cache_dir[/cache_key]``
      (``bundle_root/cache/<settings digest>`` in ``volume.json``): for sets larger than memory; files are written
      once and reused by later runs with the same settings (``cache_key``: other settings get another folder).
      Items are keyed by their file paths: delete the folder after changing files in place.
    - ``"none"``: a plain ``Dataset``.

    Only the deterministic prefix of ``transform`` is cached (:func:`cached_prefix`): ``FeedbackMaskd`` is
    ``Randomizable``, so every epoch still reads the *current* feedback mask, and the augmentation stays random.
    ``transform`` is flattened first, in place: MONAI looks for the first random transform among the top-level ones
    only, where a nested ``Compose`` (the volume steps, the resizing step) counts as random; and the feedback handler
    (:class:`~fanet_monai.feedback.inversion.CacheFrameInverse`, which holds the same ``Compose``) runs it up to the
    *flattened* position of ``FeedbackMaskd`` to make the start masks, which on a nested ``Compose`` would stop
    elsewhere and give masks of another shape than the ones the dataset feeds.

    Args:
        data: the datalist items.
        transform: the dataset's ``Compose`` (the training one holds ``FeedbackMaskd``).
        cache: one of :data:`CACHE_MODES`.
        cache_dir: the disk cache's root folder (``"disk"`` only).
        cache_key: the disk cache's sub-folder, e.g. a digest of the settings the items were preprocessed with
            (:meth:`fanet_monai.data.volume_preprocessing.VolumeSettings.cache_key`), so that other settings never
            reuse the files.
        num_workers: threads that fill the memory cache.
        progress: show the memory cache's progress bar.
    """
    if cache not in CACHE_MODES:
        raise InputError(f"cache must be one of {list(CACHE_MODES)}, got {cache!r}.")
    if not isinstance(transform, Compose):
        transform = Compose(transform)
    transform.transforms = transform.flatten().transforms  # in place: the feedback handler holds this object too
    flat = transform
    if cache == "none":
        return Dataset(data, flat)
    kept = [type(t).__name__ for t in flat.transforms[: cached_prefix(flat)]]
    logger.info("caching %d preprocessed volumes (%s): %s", len(data), cache, " > ".join(kept) or "nothing")
    if cache == "memory":
        return CacheDataset(data, flat, cache_rate=1.0, num_workers=num_workers, progress=progress)
    if cache_dir is None:
        raise InputError("cache 'disk' needs a cache_dir.")
    folder = Path(cache_dir) if cache_key is None else Path(cache_dir) / cache_key
    # the files hold MetaTensors (meta data with numpy arrays), which torch.load refuses with weights_only=True (and
    # PersistentDataset then silently recomputes every item); they are this bundle's own files under bundle_root
    return PersistentDataset(data, flat, cache_dir=folder, hash_transform=json_hashing, track_meta=True,
                             weights_only=False)
