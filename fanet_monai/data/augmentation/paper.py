"""The paper's data augmentation (Sec. IV-A) as a list of MONAI dictionary transforms.

Paper: "random crop, flipping, rotation, elastic transformation, grid distortion, optical distortion, grayscale
conversion, random brightness, contrast, channel [shuffle], and coarse dropout". :func:`paper_augmentation` builds
that list, each transform with its own probability; spatial ones move the image (bilinear) and the label and
feedback mask (nearest) together, intensity ones touch the image only.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Sequence

from monai.transforms import (
    MapTransform,
    RandCoarseDropoutd,
    RandFlipd,
    RandRotated,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    ScaleIntensityRanged,
)

from fanet_monai.data.augmentation.intensity import RandChannelShuffled, RandGrayscaled
from fanet_monai.data.augmentation.warps import RandCropResized, RandElasticd, RandGridDistortd, RandOpticalDistortd

__all__ = ["PAPER_PROBS", "choose_augmentation", "paper_augmentation"]

#: per-transform probabilities of :func:`paper_augmentation` (the paper gives none; the reference code uses 0.3 for
#: its rotation, flips and coarse dropout)
PAPER_PROBS: Dict[str, float] = {
    "crop": 0.3,
    "rotate": 0.3,
    "flip_h": 0.3,
    "flip_v": 0.3,
    "elastic": 0.2,
    "grid": 0.2,
    "optical": 0.2,
    "grayscale": 0.1,
    "brightness": 0.3,
    "contrast": 0.3,
    "channel_shuffle": 0.1,
    "dropout": 0.3,
}


def paper_augmentation(
    image_size: Sequence[int] = (256, 256),
    image_key: str = "image",
    mask_keys: Sequence[str] = ("label", "mask", "reviewed"),
    prob: float | Mapping[str, float] | None = None,
    include: Sequence[str] | None = None,
    allow_missing_keys: bool = True,
    padding_mode: str = "reflection",
) -> List[MapTransform]:
    """The paper's augmentation list (see the module doc and :mod:`~fanet_monai.data.augmentation.warps`), in this
    order: crop, rotate, flip_h, flip_v, elastic, grid, optical, grayscale, channel_shuffle, brightness, contrast,
    (clip to [0, 1]), dropout.

    Args:
        image_size: spatial size of the images it sees (only the coarse-dropout hole size, 1/8 of it, depends on it).
        image_key: the image (bilinear; the only key intensity transforms touch).
        mask_keys: keys moved with the image by nearest interpolation: the label, the feedback mask and the
            reviewed pixels of a network with a reviewed channel (and e.g. a FOV mask). Missing keys are skipped
            (``allow_missing_keys``), so the same list serves offline expansion.
        prob: one probability for all, a dict overriding :data:`PAPER_PROBS` by name, or ``None`` (the defaults).
        include: names of :data:`PAPER_PROBS` to use (default all).
        padding_mode: padding of the non-rigid warps (rotation pads with zeros, as the reference code).
    """
    probs = dict(PAPER_PROBS)
    if isinstance(prob, Mapping):
        unknown = set(prob) - set(probs)
        if unknown:
            raise ValueError(f"unknown augmentation names {sorted(unknown)}; known: {list(probs)}.")
        probs.update({k: float(v) for k, v in prob.items()})
    elif prob is not None:
        probs = {k: float(prob) for k in probs}
    names = list(probs) if include is None else list(include)
    unknown = set(names) - set(probs)
    if unknown:
        raise ValueError(f"unknown augmentation names {sorted(unknown)}; known: {list(probs)}.")
    keys = [image_key, *mask_keys]
    modes = ["bilinear"] + ["nearest"] * len(mask_keys)
    warp = {"mode": modes, "padding_mode": padding_mode, "allow_missing_keys": allow_missing_keys}
    size = [int(s) for s in image_size]
    image_only = {"allow_missing_keys": allow_missing_keys}
    builders = {
        "crop": lambda p: RandCropResized(keys, prob=p, **warp),
        "rotate": lambda p: RandRotated(
            keys, range_x=math.radians(35), prob=p, mode=modes, padding_mode="zeros",
            allow_missing_keys=allow_missing_keys,
        ),
        "flip_h": lambda p: RandFlipd(keys, prob=p, spatial_axis=1, allow_missing_keys=allow_missing_keys),
        "flip_v": lambda p: RandFlipd(keys, prob=p, spatial_axis=0, allow_missing_keys=allow_missing_keys),
        "elastic": lambda p: RandElasticd(keys, prob=p, **warp),
        "grid": lambda p: RandGridDistortd(keys, prob=p, **warp),
        "optical": lambda p: RandOpticalDistortd(keys, prob=p, **warp),
        "grayscale": lambda p: RandGrayscaled(image_key, prob=p, **image_only),
        "channel_shuffle": lambda p: RandChannelShuffled(image_key, prob=p, **image_only),
        "brightness": lambda p: RandShiftIntensityd(image_key, offsets=0.2, prob=p, **image_only),
        "contrast": lambda p: RandScaleIntensityFixedMeand(image_key, factors=0.2, prob=p, **image_only),
        "dropout": lambda p: RandCoarseDropoutd(
            image_key, holes=10, spatial_size=[max(1, s // 8) for s in size], fill_value=0.0, prob=p,
            **image_only,
        ),
    }
    order = ["crop", "rotate", "flip_h", "flip_v", "elastic", "grid", "optical",
             "grayscale", "channel_shuffle", "brightness", "contrast", "dropout"]
    chosen = [name for name in order if name in names and probs[name] > 0]
    transforms: List[MapTransform] = []
    for name in chosen:
        transforms.append(builders[name](probs[name]))
        if name == "contrast" or (name == "brightness" and "contrast" not in chosen):
            # brightness and contrast can leave [0, 1]: clip before the dropout holes are filled with 0
            transforms.append(ScaleIntensityRanged(image_key, 0.0, 1.0, 0.0, 1.0, clip=True, **image_only))
    return transforms


def choose_augmentation(name: str, choices: Mapping[str, Sequence[Any]]) -> List[Any]:
    """``choices[name]`` as a list (``train.json``: ``--augmentation light|paper|none``)."""
    if name not in choices:
        raise ValueError(f"augmentation must be one of {', '.join(choices)}, got {name!r}.")
    return list(choices[name] or [])
