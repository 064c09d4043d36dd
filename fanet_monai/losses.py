"""Losses for feedback training."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["PassAveragedLoss"]


class PassAveragedLoss(_Loss):
    """Average a segmentation loss over refinement passes stacked along the channel dimension.

    For :class:`~fanet_monai.inferers.UnrolledFeedbackInferer` with ``loss_on_every_pass=True``: the prediction
    ``(B, K, *spatial)`` holds the logits of passes ``1..K`` (one channel each), the target ``(B, 1, *spatial)``;
    the result is ``mean_k loss(pred[:, k:k+1], target)``. A single-channel prediction is just ``loss(pred, target)``.
    """

    def __init__(self, loss: _Loss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        passes = pred.shape[1]
        return torch.stack([self.loss(pred[:, k : k + 1], target) for k in range(passes)]).mean()
