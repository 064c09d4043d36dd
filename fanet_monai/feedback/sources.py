"""Where the feedback mask of a training sample comes from (paper: its previous-epoch prediction).

FANet as published feeds each training sample its own prediction from the previous epoch. After a few epochs that
mask is already close to the label, so the network learns to trust it — while at test time it starts from an Otsu
mask it never saw in training. The sources here let training see what test time shows:

- ``"previous"``: the paper's rule — the cached previous-epoch prediction (the start mask before the first one);
- ``"initial"``: always the start mask (for unrolled training, where the step itself refines it);
- ``"mixed"``: per sample and epoch, draw one of ``previous``, ``initial`` (start mask), ``empty``, ``full`` or
  ``perturbed`` (the previous mask randomly eroded or dilated, with some of its blobs dropped).
"""

from __future__ import annotations

from typing import Dict, Mapping

import numpy as np
from scipy import ndimage

__all__ = ["MASK_SOURCES", "MIX_CHOICES", "DEFAULT_MIX", "perturb_mask", "normalize_mix"]

MASK_SOURCES = ("previous", "initial", "mixed")
MIX_CHOICES = ("previous", "initial", "empty", "full", "perturbed")
DEFAULT_MIX: Dict[str, float] = {"previous": 0.25, "perturbed": 0.25, "initial": 0.25, "empty": 0.25}


def normalize_mix(mix: Mapping[str, float] | None) -> Dict[str, float]:
    """Validated probabilities of the ``mixed`` source, scaled to sum to 1."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = sorted(set(mix) - set(MIX_CHOICES))
    if unknown:
        raise ValueError(f"unknown mask sources {unknown} in the mix; choose from {list(MIX_CHOICES)}.")
    if any(p < 0 for p in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix probabilities must be >= 0 and not all 0, got {mix}.")
    total = sum(mix.values())
    return {k: v / total for k, v in mix.items() if v > 0}


def perturb_mask(
    mask: np.ndarray,
    rng: np.random.RandomState,
    max_radius: int = 3,
    drop_probability: float = 0.3,
) -> np.ndarray:
    """A plausible wrong previous prediction: ``mask`` (``(1, *spatial)`` 0/1) eroded or dilated by a random radius
    in ``[1, max_radius]``, then each connected blob dropped with ``drop_probability``. Returns uint8 0/1."""
    binary = mask[0] > 0
    radius = int(rng.randint(1, max_radius + 1))
    structure = ndimage.generate_binary_structure(binary.ndim, 1)
    if rng.rand() < 0.5:
        binary = ndimage.binary_erosion(binary, structure, iterations=radius)
    else:
        binary = ndimage.binary_dilation(binary, structure, iterations=radius)
    labels, count = ndimage.label(binary)
    if count:
        dropped = np.flatnonzero(rng.rand(count) < drop_probability) + 1
        binary &= ~np.isin(labels, dropped)
    return binary[None].astype(np.uint8)
