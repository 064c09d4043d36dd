"""Datalists for training: a folder of images and masks, or a MONAI (Decathlon-style) datalist JSON."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Dict, List, Sequence

from monai.data import load_decathlon_datalist

from fanet_monai.data.files import IMAGE_SUFFIXES, image_files

__all__ = ["SPLIT_MODES", "folder_datalist", "load_datalist", "split_items"]

SPLIT_MODES = ("random", "last")


def split_items(items: Sequence[dict], val_fraction: float, seed: int, mode: str = "random") -> Dict[str, List[dict]]:
    """Split into ``training`` and ``validation`` lists (at least one of each when possible).

    ``mode="random"``: a seeded random split. ``mode="last"``: the last items (in the given order, e.g. sorted
    file names) are the validation set: a contiguous hold-out, right for serial sections or video frames whose
    neighbours are correlated.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode must be one of {SPLIT_MODES}, got {mode!r}.")
    order = list(items)
    n_val = round(len(order) * val_fraction)
    if val_fraction > 0 and len(order) > 1:
        n_val = min(max(n_val, 1), len(order) - 1)
    if mode == "last":
        return {"training": order[: len(order) - n_val], "validation": order[len(order) - n_val :]}
    random.Random(seed).shuffle(order)
    return {"training": order[n_val:], "validation": order[:n_val]}


def folder_datalist(
    dataset_dir: str | os.PathLike,
    val_fraction: float = 0.2,
    seed: int = 0,
    images: str = "images",
    masks: str = "masks",
    split_mode: str = "random",
) -> Dict[str, List[dict]]:
    """``dataset_dir/images/*`` + ``dataset_dir/masks/*`` matched by file stem → ``{"training", "validation"}``
    (split by :func:`split_items` over the sorted stems).

    Raises ``ValueError`` naming the file for an image without a mask, a mask without an image, duplicate stems,
    and an empty folder.
    """
    root = Path(dataset_dir)
    image_dir, mask_dir = root / images, root / masks
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise ValueError(f"{folder}: folder not found (expected {root}/{images}/ and {root}/{masks}/).")
    images_by_stem, masks_by_stem = image_files(image_dir), image_files(mask_dir)
    for stem in sorted(set(images_by_stem) - set(masks_by_stem)):
        raise ValueError(f"{images_by_stem[stem]}: image has no mask in {mask_dir} (matched by file stem {stem!r}).")
    for stem in sorted(set(masks_by_stem) - set(images_by_stem)):
        raise ValueError(f"{masks_by_stem[stem]}: mask has no image in {image_dir} (matched by file stem {stem!r}).")
    if not images_by_stem:
        raise ValueError(f"{image_dir}: no images found (suffixes {', '.join(IMAGE_SUFFIXES)}).")
    items = [{"image": str(images_by_stem[s]), "label": str(masks_by_stem[s])} for s in sorted(images_by_stem)]
    return split_items(items, val_fraction, seed, split_mode)


def load_datalist(
    source: str | os.PathLike,
    split: str = "training",
    val_fraction: float = 0.2,
    seed: int = 0,
    split_mode: str = "random",
) -> List[dict]:
    """The ``split`` list (``training``/``validation``/``test``) from a datalist JSON or a dataset folder (split
    by ``val_fraction``, ``seed`` and ``split_mode``, see :func:`split_items`); a folder of 3-D volumes
    (``images/`` + ``labels/`` or ``masks/``) is read by :func:`fanet_monai.data.volumes.load_volume_datalist`."""
    path = Path(source)
    from fanet_monai.data.volumes import is_volume_folder, load_volume_datalist  # volumes.py imports this module

    if path.is_dir() and is_volume_folder(path):
        return load_volume_datalist(path, split, val_fraction, seed, split_mode)
    if path.is_dir():
        lists = folder_datalist(path, val_fraction, seed, split_mode=split_mode)
        if split not in lists:
            raise ValueError(f"{path}: a folder gives 'training' and 'validation' lists, not {split!r}.")
        return lists[split]
    if not path.is_file():
        raise ValueError(f"{path}: neither a dataset folder nor a datalist JSON file.")
    return load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=split)
