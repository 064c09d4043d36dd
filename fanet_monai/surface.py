"""Boundary metrics for volumes and images: the 95th-percentile Hausdorff distance and the surface Dice.

Dice rewards overlap; a segmentation of a small structure (hippocampus head and tail, a tumour rim, an airway) can
overlap well and still put its boundary millimetres off. The Decathlon, nnU-Net and the MONAI model zoo report:

- **HD95**: the 95th percentile of the symmetric surface distances between prediction and ground truth
  (MONAI's :func:`~monai.metrics.compute_hausdorff_distance` with ``percentile=95``), in the units of ``spacing``
  (millimetres when the spacing is the voxel size; voxels when it is ``None``). Lower is better.
- **surface Dice** (normalised surface distance, Nikolov et al. 2021): the fraction of both surfaces that lies
  within ``tolerance`` of the other (MONAI's :func:`~monai.metrics.compute_surface_dice`). Higher is better.

Empty masks, one rule (never ``nan``, like :mod:`fanet_monai.metrics`): prediction and ground truth both empty →
HD95 0 and surface Dice 1 (a correct "nothing here"); exactly one of them empty → surface Dice 0 and HD95 the
length of the image's diagonal in ``spacing`` units (the largest distance the image allows, instead of MONAI's
``nan``/``inf``), so a missed structure weighs in an average instead of disappearing from it.

Images ``(B, 1, H, W)`` and volumes ``(B, 1, D, H, W)`` take the same path; the distances are computed on the CPU
per image (MONAI uses its distance transforms; the GPU gives no gain for one image at a time).
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

__all__ = ["SURFACE_METRICS", "Spacing", "per_class_surface_metrics", "surface_metrics"]

SURFACE_METRICS: tuple[str, ...] = ("hd95", "surface_dice")

Spacing = Sequence[float] | Sequence[Sequence[float]] | None


def _per_image_spacing(spacing: Spacing, batch: int, spatial_dims: int) -> list[tuple[float, ...]]:
    """One spacing tuple per image: ``None`` → 1 per axis; one sequence → for every image; ``B`` sequences → each."""
    if spacing is None:
        return [(1.0,) * spatial_dims] * batch
    array = np.asarray(spacing, dtype=float)
    if array.ndim == 1:
        array = np.broadcast_to(array, (batch, array.shape[0]))
    if array.shape != (batch, spatial_dims) or not np.all(array > 0):
        raise ValueError(f"spacing must be {spatial_dims} positive numbers (or one such list per image), "
                         f"got {np.asarray(spacing).tolist()}.")
    return [tuple(float(v) for v in row) for row in array]


def _one_image(pred: torch.Tensor, target: torch.Tensor, metrics: Sequence[str], spacing: tuple[float, ...],
               tolerance: float) -> Dict[str, float]:
    """``pred``/``target``: ``(*spatial)`` bool tensors on the CPU."""
    has_pred, has_target = bool(pred.any()), bool(target.any())
    if not (has_pred and has_target):
        diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing)))
        both_empty = not (has_pred or has_target)
        return {"hd95": 0.0 if both_empty else diagonal, "surface_dice": 1.0 if both_empty else 0.0}
    p, y = pred[None, None].float(), target[None, None].float()
    values: Dict[str, float] = {}
    with warnings.catch_warnings():  # MONAI 1.6's get_mask_edges deprecation notice, once per call
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        if "hd95" in metrics:
            values["hd95"] = float(compute_hausdorff_distance(p, y, include_background=True, percentile=95,
                                                              spacing=list(spacing)))
        if "surface_dice" in metrics:
            values["surface_dice"] = float(compute_surface_dice(p, y, class_thresholds=[float(tolerance)],
                                                                include_background=True, spacing=list(spacing)))
    return values


def surface_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    metrics: Sequence[str] = SURFACE_METRICS,
    spacing: Spacing = None,
    tolerance: float = 1.0,
) -> Dict[str, torch.Tensor]:
    """Per-image HD95 and surface Dice of binary masks.

    Args:
        pred: ``(B, 1, *spatial)`` prediction, binarized as ``> 0.5``.
        target: ``(B, 1, *spatial)`` ground truth, binarized the same way.
        metrics: names from :data:`SURFACE_METRICS`.
        spacing: the voxel size per spatial axis (one list for all images, or one per image), e.g. millimetres;
            ``None``: 1 (distances in voxels).
        tolerance: the surface Dice's tolerance, in ``spacing`` units (default 1 voxel / 1 mm).

    Returns:
        ``{name: (B,) float32 tensor}`` on ``pred``'s device.
    """
    unknown = [m for m in metrics if m not in SURFACE_METRICS]
    if unknown:
        raise ValueError(f"unknown surface metrics {unknown}; valid names: {list(SURFACE_METRICS)}.")
    if pred.shape != target.shape or pred.ndim < 4 or pred.shape[1] != 1:
        raise ValueError(f"expected (B, 1, *spatial) masks of the same shape with 2 or 3 spatial dimensions, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}.")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}.")
    spacings = _per_image_spacing(spacing, pred.shape[0], pred.ndim - 2)
    p, y = pred.detach().cpu()[:, 0] > 0.5, target.detach().cpu()[:, 0] > 0.5
    rows = [_one_image(p[b], y[b], metrics, spacings[b], tolerance) for b in range(p.shape[0])]
    return {m: torch.tensor([r[m] for r in rows], dtype=torch.float32, device=pred.device) for m in metrics}


def per_class_surface_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    metrics: Sequence[str] = SURFACE_METRICS,
    spacing: Spacing = None,
    tolerance: float = 1.0,
) -> Dict[str, torch.Tensor]:
    """:func:`surface_metrics` of every class ``1..K`` of label maps ``(B, 1, *spatial)`` (codes ``0..K``).

    Returns:
        ``{name: (B, K)}``: column ``k - 1`` is class ``k`` against the rest.
    """
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
    per_class = [surface_metrics(pred == k, target.to(pred.device) == k, metrics, spacing, tolerance)
                 for k in range(1, int(num_classes) + 1)]
    return {m: torch.stack([c[m] for c in per_class], dim=1) for m in metrics}
