"""Training-time unrolled feedback: :class:`UnrolledFeedbackInferer`, the trainer's inferer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

from fanet_monai.feedback.masks import check_feedback_mode, check_start_mask, feedback_mask, start_mask
from fanet_monai.inferers.passes import check_mask, check_num_passes

__all__ = ["UnrolledFeedbackInferer"]


class UnrolledFeedbackInferer(Inferer):
    """Training-time unrolled refinement: train on the prediction made after ``num_passes - 1`` feedback passes.

    Used as the trainer's inferer, called ``inferer(images, network, mask=mask)`` with the mask the feedback
    source chose for each sample (:class:`~fanet_monai.feedback.transforms.FeedbackMaskd`: the previous-epoch
    prediction, the start mask, or a mix), or without ``mask`` for the configured start mask. Passes
    ``1 .. num_passes - 1`` run without gradient, each feeding its binarized (or probability) prediction to the
    next, exactly as :class:`IterativeRefinementInferer` does at test time; pass ``num_passes`` runs with gradient.
    ``num_passes=1`` is plain single-pass training on the fed mask. The network returns ``C = 1`` (binary) or
    ``C = K + 1`` (K classes) channels; the fed mask is one channel either way
    (:func:`~fanet_monai.feedback.masks.feedback_mask`: the foreground of any class).

    Args:
        num_passes: passes per training step, ``>= 1``.
        feedback: ``"binary"`` or ``"probability"``, as at test time.
        threshold: probability threshold of binary feedback (one output channel; K + 1 channels use the argmax).
        loss_on_every_pass: also keep the gradient of passes ``1 .. num_passes - 1`` and return every pass's logits
            stacked along the channel dimension, pass-major: ``(B, num_passes * C, *spatial)``, pass ``k`` in
            channels ``(k - 1) * C .. k * C - 1`` (binary: ``(B, num_passes, *spatial)``, pass ``k`` in channel
            ``k - 1``), for :class:`~fanet_monai.losses.PassAveragedLoss` with ``out_channels=C``. Otherwise returns
            the last pass ``(B, C, *spatial)``.
        start_mask: the first pass's mask when the call gives none (see :class:`IterativeRefinementInferer`).
        random_passes: draw the number of passes of each call uniformly from ``1 .. num_passes`` (with
            ``torch``'s generator, so ``set_determinism`` fixes it), so that training sees its own first, second
            and later refinement passes; cannot be combined with ``loss_on_every_pass``.

    The fed masks themselves are never differentiated through (they are thresholded, or detached probabilities).

    A network with a reviewed channel (``FANet(reviewed_input=True)``) is called with ``reviewed=`` (the batch's
    reviewed pixels, :class:`~fanet_monai.feedback.transforms.FeedbackMaskd` ``reviewed_key``): every pass gets
    ``(images, reviewed, mask)``, and from pass 2 on the fed mask keeps the first mask on the reviewed pixels, as
    the test-time inferer keeps an annotator's reviewed label at every pass.
    """

    def __init__(
        self,
        num_passes: int = 2,
        feedback: str = "binary",
        threshold: float = 0.5,
        loss_on_every_pass: bool = False,
        start_mask: str | Callable[[torch.Tensor], torch.Tensor] = "otsu",
        random_passes: bool = False,
    ) -> None:
        super().__init__()
        self.num_passes = check_num_passes(num_passes)
        check_feedback_mode(feedback)
        check_start_mask(start_mask, allow_callable=True)
        if random_passes and loss_on_every_pass:
            raise ValueError(
                "random_passes and loss_on_every_pass cannot be combined (the number of returned passes would vary)."
            )
        self.feedback = feedback
        self.threshold = float(threshold)
        self.loss_on_every_pass = bool(loss_on_every_pass)
        self.start_mask = start_mask
        self.random_passes = bool(random_passes)

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        mask: torch.Tensor | None = None,
        reviewed: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Run the unrolled passes.

        Args:
            inputs: ``(B, C, *spatial)`` images.
            network: callable ``(B, C_image + 1, *spatial) -> (B, C, *spatial)`` logits, ``C = 1`` or ``K + 1``.
            args: extra positional arguments for ``network``.
            mask: ``(B, 1, *spatial)`` mask of the first pass; ``None`` for the configured start mask.
            reviewed: ``(B, 1, *spatial)`` 0/1 reviewed pixels for a network with a reviewed channel (see above);
                ``None``: the network has none.
            kwargs: extra keyword arguments for ``network``.

        Returns:
            ``(B, C, *spatial)`` logits of the last pass, or ``(B, num_passes * C, *spatial)`` (pass-major) with
            ``loss_on_every_pass``.
        """
        check_mask(inputs, mask)
        mask = start_mask(inputs, self.start_mask) if mask is None else mask.to(inputs.dtype)
        kept = None
        if reviewed is not None:
            check_mask(inputs, reviewed, "reviewed")
            kept = reviewed.to(inputs.dtype) > 0.5
            inputs = torch.cat([inputs, kept.to(inputs.dtype)], dim=1)
            first = mask
        num_passes = self.num_passes
        if self.random_passes:
            num_passes = int(torch.randint(1, self.num_passes + 1, (1,)).item())
        outputs = []
        for k in range(1, num_passes + 1):
            with_grad = torch.is_grad_enabled() and (k == num_passes or self.loss_on_every_pass)
            with torch.set_grad_enabled(with_grad):
                logits = network(torch.cat([inputs, mask], dim=1), *args, **kwargs)
            outputs.append(logits)
            mask = feedback_mask(logits, self.feedback, self.threshold).to(inputs.dtype)
            if kept is not None:
                mask = torch.where(kept, first, mask)
        if self.loss_on_every_pass:
            return torch.cat(outputs, dim=1)
        return outputs[-1]
