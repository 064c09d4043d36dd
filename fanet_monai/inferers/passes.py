"""The rules both inferers share: the early-stop rule and the checks of their arguments."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_mask", "check_num_passes", "converged", "early_stop_passes"]


def converged(current: torch.Tensor, previous: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The early-stop rule: which images' discrete predictions stopped changing.

    Args:
        current: ``(B, 1, *spatial)`` discrete predictions of a pass
            (:func:`~fanet_monai.feedback.masks.discrete_prediction`): boolean or 0/1 masks (binary), label maps
            0..K (K classes; a pixel that changes class counts as changed).
        previous: the same images' predictions of the pass before.
        tolerance: largest fraction of changed pixels, in ``[0, 1]``, that still counts as "stopped changing".

    Returns:
        ``(B,)`` bool: the fraction of pixels that differ is at most ``tolerance`` (computed in float64, exact for
        ``tolerance = k / n``).
    """
    changed = (current != previous).flatten(1).sum(dim=1).double() / current[0].numel()
    return changed <= tolerance


def early_stop_passes(binary: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Per image, the pass at which :class:`IterativeRefinementInferer` with ``early_stop=True`` stops, from the
    discrete predictions of a run without early stop: the first pass ``k >= 2`` that :func:`converged` with pass
    ``k - 1``, ``num_passes`` if there is none. Taking pass ``k``'s prediction for each image gives the early-stop
    result.

    Args:
        binary: ``(num_passes, B, 1, *spatial)`` discrete predictions of passes 1 .. ``num_passes`` (boolean or
            0/1 masks, or label maps 0..K: :func:`~fanet_monai.feedback.masks.discrete_prediction`).
        tolerance: as in :func:`converged`.

    Returns:
        ``(B,)`` long tensor of passes used, in ``1 .. num_passes``, on ``binary``'s device.
    """
    if binary.ndim < 4:
        raise ValueError(f"expected (num_passes, B, 1, *spatial) predictions, got shape {tuple(binary.shape)}.")
    num_passes, batch = binary.shape[:2]
    used = torch.full((batch,), num_passes, dtype=torch.long, device=binary.device)
    for k in range(num_passes - 1, 0, -1):  # last to first: the earliest stopping pass wins
        used = torch.where(converged(binary[k], binary[k - 1], tolerance), k + 1, used)
    return used


def check_num_passes(num_passes: Any) -> int:
    """``num_passes`` as an int; ``ValueError`` unless it is an integer >= 1."""
    if isinstance(num_passes, bool) or int(num_passes) != num_passes or num_passes < 1:
        raise ValueError(f"num_passes must be an integer >= 1, got {num_passes!r}.")
    return int(num_passes)


def check_mask(images: torch.Tensor, mask: torch.Tensor | None, name: str = "mask") -> None:
    """``ValueError`` (naming the argument ``name``) unless ``mask`` is ``None`` or ``(B, 1, *spatial)`` for
    ``images`` ``(B, C, *spatial)``."""
    if mask is None:
        return
    expected = (images.shape[0], 1, *images.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"{name} must have shape {expected} (B, 1, *spatial) for images of shape {tuple(images.shape)}, "
            f"got {tuple(mask.shape)}."
        )
