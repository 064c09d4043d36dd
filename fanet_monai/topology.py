"""Connectivity metrics for thin structures (vessels, membranes): centre-line Dice and component counts.

Dice barely moves when a thin vessel is cut in two or a spurious fragment appears; these metrics do. They are
computed per image on binarized masks with scikit-image (skeletons and connected components are not GPU work and
every tensor is moved to the CPU here).

- **clDice** (Shit et al., CVPR 2021): with ``S(.)`` the morphological skeleton, ``Tprec = |S(P) ∩ L| / |S(P)|``
  and ``Tsens = |S(L) ∩ P| / |S(L)|``; clDice is their harmonic mean. MONAI has the *soft* version as a loss
  (:class:`monai.losses.SoftclDiceLoss`); this is the hard metric on binary masks.
- **Betti-0** is the number of connected foreground components with full connectivity
  (``skimage.measure.label(..., connectivity=ndim)``): 8-connectivity in 2-D, 26-connectivity in 3-D (voxels
  sharing only an edge or a corner are connected). The **Betti-0 error** of a prediction is ``|b0(P) - b0(L)|``:
  fragments added or structures merged/split.

Images ``(B, 1, H, W)`` and volumes ``(B, 1, D, H, W)`` take the same code path: ``skimage.morphology.skeletonize``
uses Zhang's method in 2-D and Lee's in 3-D (a one-voxel-wide centre line of a tube).

Zero-denominator convention, as in :mod:`fanet_monai.metrics`: when a skeleton is empty its ratio is 1.0 if the
prediction equals the label on that image, else 0.0.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from skimage.measure import label as label_components
from skimage.morphology import skeletonize

__all__ = ["CONNECTIVITY_METRICS", "betti0", "centerline_dice", "connectivity_metrics"]

CONNECTIVITY_METRICS: tuple[str, ...] = ("cldice", "betti0_error", "components")


def _as_binary_images(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(B, 1, *spatial)`` tensor or array, binarized as ``> 0.5`` → ``(B, *spatial)`` bool numpy array."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim < 3 or array.shape[1] != 1:
        raise ValueError(f"expected (B, 1, *spatial) masks, got shape {tuple(array.shape)}.")
    return array[:, 0] > 0.5


def betti0(mask: np.ndarray) -> int:
    """Number of connected foreground components of one binary ``(H, W)`` or ``(D, H, W)`` mask (full
    connectivity: 8 neighbours in 2-D, 26 in 3-D)."""
    return int(label_components(np.asarray(mask, dtype=bool), connectivity=mask.ndim).max())


def _ratio(numerator: int, denominator: int, identical: bool) -> float:
    return numerator / denominator if denominator else float(identical)


def centerline_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Hard clDice of one binary ``(H, W)`` or ``(D, H, W)`` prediction against its label (see the module
    docstring)."""
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}.")
    identical = bool(np.array_equal(pred, target))
    skel_pred, skel_target = skeletonize(pred), skeletonize(target)
    tprec = _ratio(int((skel_pred & target).sum()), int(skel_pred.sum()), identical)
    tsens = _ratio(int((skel_target & pred).sum()), int(skel_target.sum()), identical)
    return 2.0 * tprec * tsens / (tprec + tsens) if tprec + tsens > 0 else 0.0


def connectivity_metrics(pred: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-image connectivity metrics of a batch.

    Args:
        pred: ``(B, 1, *spatial)`` prediction, binarized as ``> 0.5``.
        target: ``(B, 1, *spatial)`` label, binarized the same way.

    Returns:
        ``{"cldice": (B,), "betti0_error": (B,), "components": (B,)}`` float32 CPU tensors: centre-line Dice,
        ``|b0(pred) - b0(target)|`` and ``b0(pred)``.
    """
    p, t = _as_binary_images(pred), _as_binary_images(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {p.shape} and {t.shape}.")
    cldice, error, components = [], [], []
    for pi, ti in zip(p, t):
        cldice.append(centerline_dice(pi, ti))
        b_pred = betti0(pi)
        components.append(b_pred)
        error.append(abs(b_pred - betti0(ti)))
    values = {"cldice": cldice, "betti0_error": error, "components": components}
    return {name: torch.tensor(v, dtype=torch.float32) for name, v in values.items()}
