"""Where the feedback mask of a training sample comes from (paper: its previous-epoch prediction).

FANet as published feeds each training sample its own prediction from the previous epoch. After a few epochs that
mask is already close to the label, so the network learns to trust it — while at test time it starts from an Otsu
mask it never saw in training. The sources here let training see what test time shows:

- ``"previous"``: the paper's rule — the cached previous-epoch prediction (the start mask before the first one);
- ``"initial"``: always the start mask (for unrolled training, where the step itself refines it);
- ``"mixed"``: per sample and epoch, draw one of ``previous``, ``initial`` (start mask), ``empty``, ``full``,
  ``perturbed`` (the previous mask randomly eroded or dilated, with some of its blobs dropped) or ``degraded`` (the
  sample's *label* degraded the way a rough or half-edited annotation is: :func:`degrade_label`; what MONAI Label's
  refine-my-mask feeds the network at test time) or ``corrected`` (the previous mask with the label pasted into
  a few random boxes: :func:`paste_label_boxes`; what an annotator's corrections on the network's own mask look
  like, as in the annotation loop) or ``corrected_at_errors`` (the same with every box centred on a pixel where the
  mask is still wrong, as an annotator corrects where they see an error and interactive-segmentation training
  places its simulated clicks in the error regions).
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping

import numpy as np
from scipy import ndimage
from skimage import draw, measure

__all__ = [
    "MASK_SOURCES",
    "MIX_CHOICES",
    "DEFAULT_MIX",
    "ANNOTATOR_MIX",
    "ANNOTATOR_ERRORS_MIX",
    "NAMED_MIXES",
    "DEGRADATIONS",
    "perturb_mask",
    "normalize_mix",
    "drop_components",
    "polygon_per_component",
    "box_per_component",
    "degrade_label",
    "paste_label_boxes",
]

MASK_SOURCES = ("previous", "initial", "mixed")
MIX_CHOICES = ("previous", "initial", "empty", "full", "perturbed", "degraded", "corrected", "corrected_at_errors")
#: the kinds of :func:`degrade_label`, drawn with equal probability
DEGRADATIONS = ("eroded", "dilated", "components_dropped", "polygon", "box")
DEFAULT_MIX: Dict[str, float] = {"previous": 0.25, "perturbed": 0.25, "initial": 0.25, "empty": 0.25}
#: a mix for networks that will refine annotators' corrected masks: the default with ``corrected`` masks added
ANNOTATOR_MIX: Dict[str, float] = {"previous": 0.15, "perturbed": 0.15, "initial": 0.15, "empty": 0.15,
                                   "corrected": 0.4}
#: :data:`ANNOTATOR_MIX` with the corrections placed on the mask's errors (``corrected_at_errors``)
ANNOTATOR_ERRORS_MIX: Dict[str, float] = {"previous": 0.15, "perturbed": 0.15, "initial": 0.15, "empty": 0.15,
                                          "corrected_at_errors": 0.4}
#: the mixes that ``mask_mix`` can name
NAMED_MIXES: Dict[str, Dict[str, float]] = {"default": DEFAULT_MIX, "annotator": ANNOTATOR_MIX,
                                            "annotator_errors": ANNOTATOR_ERRORS_MIX}


def normalize_mix(mix: Mapping[str, float] | str | None) -> Dict[str, float]:
    """Validated probabilities of the ``mixed`` source, scaled to sum to 1. ``mix`` is a mapping of
    :data:`MIX_CHOICES` to weights, a name of :data:`NAMED_MIXES` (``"default"``, ``"annotator"``,
    ``"annotator_errors"``) or ``None``
    (the default)."""
    if isinstance(mix, str):
        if mix not in NAMED_MIXES:
            raise ValueError(f"unknown mask mix {mix!r}; give one of {list(NAMED_MIXES)} or a mapping of "
                             f"{list(MIX_CHOICES)} to probabilities.")
        mix = NAMED_MIXES[mix]
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


def drop_components(mask: np.ndarray, fraction: float, rng: np.random.RandomState | np.random.Generator) -> np.ndarray:
    """``mask`` (bool, any spatial shape) without ``round(fraction * n)`` of its ``n`` connected components, chosen
    at random."""
    labels = measure.label(mask)
    ids = np.arange(1, labels.max() + 1)
    dropped = rng.choice(ids, size=int(round(fraction * len(ids))), replace=False) if len(ids) else []
    return mask & ~np.isin(labels, dropped)


def _per_component(mask: np.ndarray, shape_of: Callable[[object], np.ndarray]) -> np.ndarray:
    out = np.zeros_like(mask, dtype=bool)
    for region in measure.regionprops(measure.label(mask)):
        out |= shape_of(region)
    return out


def polygon_per_component(mask: np.ndarray, tolerance: float = 4.0) -> np.ndarray:
    """Each connected component of a 2D bool ``mask`` replaced by its outline simplified to a coarse polygon
    (Douglas-Peucker, ``tolerance`` px) and filled: a quick hand-drawn annotation."""
    if mask.ndim != 2:
        raise ValueError(f"polygon_per_component needs a 2D mask, got shape {mask.shape}.")

    def shape(region) -> np.ndarray:
        filled = np.zeros_like(mask, dtype=bool)
        r0, c0 = region.bbox[:2]
        for contour in measure.find_contours(np.pad(region.image, 1).astype(float), 0.5):
            coarse = measure.approximate_polygon(contour, tolerance)
            rr, cc = draw.polygon(coarse[:, 0] - 1 + r0, coarse[:, 1] - 1 + c0, mask.shape)
            filled[rr, cc] = True
        return filled

    return _per_component(mask, shape)


def box_per_component(mask: np.ndarray) -> np.ndarray:
    """Each connected component of ``mask`` (bool, 2D or 3D) replaced by its bounding box."""

    def shape(region) -> np.ndarray:
        filled = np.zeros_like(mask, dtype=bool)
        ndim = mask.ndim
        filled[tuple(slice(region.bbox[i], region.bbox[i + ndim]) for i in range(ndim))] = True
        return filled

    return _per_component(mask, shape)


def degrade_label(
    label: np.ndarray, rng: np.random.RandomState, max_radius: int = 3, kind: str | None = None
) -> np.ndarray:
    """A rough annotation made from the true ``label`` (``(1, *spatial)``, > 0 is foreground): one of
    :data:`DEGRADATIONS` drawn at random (or ``kind``) — eroded or dilated by 1..``max_radius`` px, 30 % of its
    components dropped, a coarse polygon per component (2D; a box in 3D) or a bounding box per component. Training
    on these teaches the network to refine a user's rough mask (MONAI Label's refine-my-mask). Returns uint8 0/1
    ``(1, *spatial)``."""
    binary = np.asarray(label[0]) > 0
    kind = DEGRADATIONS[int(rng.randint(len(DEGRADATIONS)))] if kind is None else kind
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; choose from {list(DEGRADATIONS)}.")
    structure = ndimage.generate_binary_structure(binary.ndim, 1)
    radius = int(rng.randint(1, max_radius + 1))
    if kind == "eroded":
        binary = ndimage.binary_erosion(binary, structure, iterations=radius)
    elif kind == "dilated":
        binary = ndimage.binary_dilation(binary, structure, iterations=radius)
    elif kind == "components_dropped":
        binary = drop_components(binary, 0.3, rng)
    elif kind == "polygon" and binary.ndim == 2:
        binary = polygon_per_component(binary, tolerance=float(radius + 1))
    else:
        binary = box_per_component(binary)
    return binary[None].astype(np.uint8)


def paste_label_boxes(
    mask: np.ndarray,
    label: np.ndarray,
    rng: np.random.RandomState,
    max_boxes: int = 4,
    side: tuple[float, float] = (0.0625, 0.25),
    at_errors: bool = False,
    return_reviewed: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A mask an annotator has partly corrected: ``mask`` (``(1, *spatial)`` 0/1, e.g. the network's previous
    prediction) with the true ``label`` (``(1, *spatial)``, > 0 is foreground) pasted into 1..``max_boxes`` random
    boxes, each of a random side in ``side`` (fractions of every spatial size, at least 1 pixel). Training on these
    shows the network masks that are exact in places and its own answer elsewhere, as the annotation loop's
    corrected masks are.

    With ``at_errors`` every box is centred on a pixel drawn uniformly from those where the mask (as corrected by
    the boxes before it) still differs from the label — an annotator corrects where they see an error, and
    interactive-segmentation training (e.g. RITM) places its simulated clicks in the error regions; random boxes on
    a good mask mostly change nothing. Boxes stop early when no error is left. Returns uint8 0/1 ``(1, *spatial)``;
    with ``return_reviewed`` also the union of the boxes, uint8 0/1 ``(1, *spatial)``: the pixels the simulated
    annotator reviewed (their label is final), what a network with a reviewed channel is given.
    """
    if mask.shape != label.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the label's {label.shape}.")
    if max_boxes < 1 or not 0 < side[0] <= side[1] <= 1:
        raise ValueError(f"need max_boxes >= 1 and 0 < side[0] <= side[1] <= 1, got {max_boxes} and {side}.")
    out = np.asarray(mask[0]) > 0
    truth = np.asarray(label[0]) > 0
    reviewed = np.zeros(out.shape, dtype=bool)
    for _ in range(int(rng.randint(1, max_boxes + 1))):
        fraction = rng.uniform(*side)
        lengths = [min(size, max(1, int(round(fraction * size)))) for size in out.shape]
        if at_errors:
            errors = np.flatnonzero(out != truth)
            if errors.size == 0:
                break
            centre = np.unravel_index(int(errors[rng.randint(errors.size)]), out.shape)
            starts = [min(max(0, int(c) - n // 2), size - n) for c, n, size in zip(centre, lengths, out.shape)]
        else:
            starts = [int(rng.randint(0, size - n + 1)) for n, size in zip(lengths, out.shape)]
        box = tuple(slice(a, a + n) for a, n in zip(starts, lengths))
        out[box] = truth[box]
        reviewed[box] = True
    if return_reviewed:
        return out[None].astype(np.uint8), reviewed[None].astype(np.uint8)
    return out[None].astype(np.uint8)
