"""Training-time unrolled feedback: :class:`UnrolledFeedbackInferer`, the trainer's inferer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer

from fanet_monai.feedback.masks import check_feedback_mode, check_start_mask, feedback_mask, start_mask
from fanet_monai.feedback.sources import paste_label_boxes
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

    **Corrections between passes** (``correction_prob > 0``; RITM-style iterative training, Sofiiuk et al. 2022):
    after every pass but the last, each sample is, with probability ``correction_prob``, corrected by a simulated
    annotator — the label (``label=``, the batch's label, ``> 0`` = foreground) pasted into 1..``correction_boxes``
    boxes of a side in ``correction_side`` (fractions of the size), each centred on a pixel the *current* prediction
    still has wrong (:func:`~fanet_monai.feedback.sources.paste_label_boxes` ``at_errors``) — and the next pass is fed
    that corrected mask, the corrected pixels held at every later pass (and, for a reviewed network, marked in its
    reviewed channel). The gradient pass then sees what the annotation loop shows the network at test time: its own
    answer with an annotator's corrections where it was wrong, rather than a cached previous-epoch answer. Draws use
    ``torch``'s generator (``set_determinism`` fixes them); masks are corrected on the CPU. Needs ``num_passes >= 2``
    (with ``random_passes``, the steps that draw one pass have no correction).
    """

    def __init__(
        self,
        num_passes: int = 2,
        feedback: str = "binary",
        threshold: float = 0.5,
        loss_on_every_pass: bool = False,
        start_mask: str | Callable[[torch.Tensor], torch.Tensor] = "otsu",
        random_passes: bool = False,
        correction_prob: float = 0.0,
        correction_boxes: int = 4,
        correction_side: Sequence[float] = (0.0625, 0.25),
    ) -> None:
        super().__init__()
        self.num_passes = check_num_passes(num_passes)
        if not 0.0 <= float(correction_prob) <= 1.0:
            raise ValueError(f"correction_prob must be in [0, 1], got {correction_prob!r}.")
        if float(correction_prob) > 0 and self.num_passes < 2:
            raise ValueError(
                f"correction_prob={correction_prob} needs num_passes >= 2 (the corrections are made between passes), "
                f"got num_passes={num_passes}: set unroll_passes to 2 or more."
            )
        side = tuple(float(v) for v in correction_side)
        if int(correction_boxes) < 1 or len(side) != 2 or not 0 < side[0] <= side[1] <= 1:
            raise ValueError(
                f"need correction_boxes >= 1 and correction_side (low, high) with 0 < low <= high <= 1, got "
                f"{correction_boxes} and {tuple(correction_side)}."
            )
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
        self.correction_prob = float(correction_prob)
        self.correction_boxes = int(correction_boxes)
        self.correction_side = side

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        mask: torch.Tensor | None = None,
        reviewed: torch.Tensor | None = None,
        label: torch.Tensor | None = None,
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
            label: ``(B, 1, *spatial)`` label (``> 0`` is foreground) for the corrections between passes; required
                when ``correction_prob > 0``, ignored otherwise.
            kwargs: extra keyword arguments for ``network``.

        Returns:
            ``(B, C, *spatial)`` logits of the last pass, or ``(B, num_passes * C, *spatial)`` (pass-major) with
            ``loss_on_every_pass``.
        """
        check_mask(inputs, mask)
        mask = start_mask(inputs, self.start_mask) if mask is None else mask.to(inputs.dtype)
        correcting = self.correction_prob > 0
        if correcting:
            if label is None:
                raise ValueError(
                    "UnrolledFeedbackInferer(correction_prob > 0) corrects masks with the label: call it with "
                    "label= (the trainer's PrepareBatchExtraInput extra_keys must include 'label')."
                )
            check_mask(inputs, label, "label")
        # held: pixels whose fed value is fixed at every later pass (reviewed pixels, corrected boxes) and their value
        held, held_value = None, None
        if reviewed is not None:
            check_mask(inputs, reviewed, "reviewed")
            held, held_value = reviewed.to(inputs.dtype) > 0.5, mask
        num_passes = self.num_passes
        if self.random_passes:
            num_passes = int(torch.randint(1, self.num_passes + 1, (1,)).item())
        outputs = []
        for k in range(1, num_passes + 1):
            network_input = [inputs, mask] if reviewed is None else [inputs, held.to(inputs.dtype), mask]
            with_grad = torch.is_grad_enabled() and (k == num_passes or self.loss_on_every_pass)
            with torch.set_grad_enabled(with_grad):
                logits = network(torch.cat(network_input, dim=1), *args, **kwargs)
            outputs.append(logits)
            if k == num_passes:
                break
            mask = feedback_mask(logits, self.feedback, self.threshold).to(inputs.dtype)
            if correcting:
                held, held_value = self._correct(mask, label, held, held_value)
            if held is not None:
                mask = torch.where(held, held_value, mask)
        if self.loss_on_every_pass:
            return torch.cat(outputs, dim=1)
        return outputs[-1]

    def _correct(
        self, mask: torch.Tensor, label: torch.Tensor, held: torch.Tensor | None, held_value: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste the label into boxes at the errors of ``mask`` (binarized at 0.5) for the samples drawn; return
        the held pixels and their values with the boxes added."""
        if held is None:
            held, held_value = torch.zeros_like(mask, dtype=torch.bool), mask
        held, held_value = held.clone(), held_value.clone()
        drawn = torch.rand(mask.shape[0]) < self.correction_prob
        truth = label > 0
        for b in torch.nonzero(drawn).flatten().tolist():
            rng = np.random.RandomState(int(torch.randint(0, 2**31 - 1, (1,)).item()))
            current = torch.where(held[b], held_value[b], mask[b]) > 0.5
            _, boxes = paste_label_boxes(
                current.cpu().numpy(), truth[b].cpu().numpy(), rng, max_boxes=self.correction_boxes,
                side=self.correction_side, at_errors=True, return_reviewed=True,
            )
            boxes = torch.as_tensor(boxes, device=mask.device) > 0
            held[b] |= boxes
            held_value[b] = torch.where(boxes, truth[b].to(mask.dtype), held_value[b])
        return held, held_value
