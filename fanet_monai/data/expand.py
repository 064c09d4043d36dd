"""Offline augmentation (Table I's "train after aug."): fixed augmented copies of every training image on disk.

``prepare(..., offline_copies=N)`` (:mod:`fanet_monai.data.layouts`) calls :func:`expand_offline`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import Compose, LoadImaged
from monai.utils import convert_to_tensor
from PIL import Image

from fanet_monai.data.augmentation import paper_augmentation
from fanet_monai.data.files import file_stem
from fanet_monai.data.readers import BitmapReader
from fanet_monai.data.transforms import AsRGBd, BinarizeLabeld, ScaleToUnitd

__all__ = ["expand_offline"]


def _to_hwc(array: torch.Tensor) -> np.ndarray:
    """``(C, X, Y)`` as MONAI loads bitmaps (reverse indexing) → ``(Y, X, C)`` rows × columns for PIL."""
    return np.transpose(convert_to_tensor(array, track_meta=False).cpu().numpy(), (2, 1, 0))


def expand_offline(
    items: Sequence[Mapping[str, str]],
    out_dir: str | os.PathLike,
    copies: int,
    seed: int = 0,
    prob: float | Mapping[str, float] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    extra_keys: Sequence[str] = ("fov",),
) -> List[Dict[str, str]]:
    """Write ``copies`` fixed augmented copies of every item (:func:`paper_augmentation` at the item's own size,
    seeded) as ``out_dir/{images,masks,<extra>}/<stem>_augNN.png`` (image uint8 RGB, masks 0/255) and return their
    datalist entries (absolute paths), in item order. 16-bit images are written as 8-bit copies."""
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}.")
    root = Path(out_dir)
    mask_keys = [label_key, *extra_keys]
    load = Compose([
        LoadImaged([image_key, *mask_keys], reader=BitmapReader, dtype=None, image_only=True,
                   ensure_channel_first=True, allow_missing_keys=True),
        ScaleToUnitd(image_key),
        AsRGBd(image_key),
        BinarizeLabeld(mask_keys, allow_missing_keys=True),
    ])
    rng = np.random.RandomState(seed)
    expanded: List[Dict[str, str]] = []
    for item in items:
        present = [k for k in mask_keys if k in item]
        sample = load({k: item[k] for k in [image_key, *present]})
        size = tuple(sample[image_key].shape[1:])
        augment = Compose(paper_augmentation(size, image_key, present, prob=prob))
        stem = file_stem(item[image_key])
        for copy in range(copies):
            augment.set_random_state(seed=int(rng.randint(0, 2**31 - 1)))
            out = augment({k: v.clone() for k, v in sample.items()})
            entry: Dict[str, str] = {}
            for key in [image_key, *present]:
                folder = {image_key: "images", label_key: "masks"}.get(key, key)
                path = root / folder / f"{stem}_aug{copy:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = _to_hwc(out[key])
                if key == image_key:
                    array = (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
                else:
                    array = ((pixels[..., 0] > 0.5) * 255).astype(np.uint8)
                Image.fromarray(array).save(path)
                entry[key] = str(path.absolute())
            expanded.append(entry)
    return expanded
