"""Losses for feedback training."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["PassAveragedLoss"]


class PassAveragedLoss(_Loss):
    """Average a segmentation loss over refinement passes stacked along the channel dimension.

    For :class:`~fanet_monai.inferers.UnrolledFeedbackInferer` with ``loss_on_every_pass=True``: the prediction
    ``(B, P * C, *spatial)`` holds the logits of passes ``1..P``, pass-major (pass ``k`` in channels
    ``(k - 1) * C .. k * C - 1``), the target ``(B, 1, *spatial)``; the result is
    ``mean_k loss(pred[:, k*C:(k+1)*C], target)``. A prediction of ``C`` channels (one pass) is just
    ``loss(pred, target)``.

    - Binary (``out_channels=1``, the default): one channel per pass, e.g. ``DiceCELoss(sigmoid=True)``.
    - K classes (``out_channels=K + 1``): ``DiceCELoss(softmax=True, to_onehot_y=True)`` with integer-valued
      labels ``(B, 1, *spatial)`` (0 = background, 1..K), e.g. from
      :class:`~fanet_monai.data.transforms.BinarizeLabeld` with ``num_classes=K``.

    Args:
        loss: the loss of one pass, ``loss(pred (B, C, *spatial), target) -> scalar``.
        out_channels: the network's output channels ``C`` per pass (``network_def#out_channels``).

    Raises:
        ValueError: ``out_channels < 1``; in ``forward``, a prediction whose channel count is not a multiple of it.
    """

    def __init__(self, loss: _Loss, out_channels: int = 1) -> None:
        super().__init__()
        if isinstance(out_channels, bool) or int(out_channels) != out_channels or out_channels < 1:
            raise ValueError(f"out_channels must be an integer >= 1, got {out_channels!r}.")
        self.loss = loss
        self.out_channels = int(out_channels)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``pred`` ``(B, P * C, *spatial)`` logits of ``P`` passes, ``target`` ``(B, 1, *spatial)``: the mean loss
        over the passes (a scalar, as ``loss`` returns)."""
        c = self.out_channels
        if pred.shape[1] % c:
            raise ValueError(
                f"the prediction has {pred.shape[1]} channels, not a multiple of out_channels={c} (passes are "
                "stacked pass-major along the channels)."
            )
        passes = pred.shape[1] // c
        return torch.stack([self.loss(pred[:, k * c : (k + 1) * c], target) for k in range(passes)]).mean()
