"""Where a person should look, and what a person drew: the review side of refinement (issue 22).

**Where-to-look maps**, each ``(B, 1, *spatial)`` float32 in ``[0, 1]`` (0: nothing to look at, 1: look here), for
binary and multi-class outputs, 2-D and 3-D, computed from the refinement the product runs anyway:

- ``"instability"`` — how often a pixel's predicted label changed between consecutive passes: the count of changes
  over passes 2..N divided by N - 1. 0 where every pass agrees, 1 where the prediction flips at every pass. Costs no
  extra pass (it reads the passes of the refinement); needs ``num_passes >= 2`` (with one pass it is all 0). With
  early stop a finished image repeats its last prediction, which counts as no change.
- ``"starts"`` — disagreement between refinements from different start masks (by default Otsu, empty, full, and
  the annotator's label when one is given), run as **one batch** of ``S x B`` images: ``1 - (share of the most
  frequent label among the S answers)``, scaled so that an even split is 1. Costs ``S`` times the passes.
- ``"confidence"`` — the usual baseline from the final logits alone: ``1 - |2p - 1|`` for one channel (``p`` the
  sigmoid; 1 at ``p = 0.5``), ``1 - (p_first - p_second)`` for K + 1 channels (the softmax margin). Costs nothing.

**Annotator constraints** (:class:`AnnotatorConstraint`): pixels an annotator reviewed keep the annotator's label
at every pass — in the logits (set to a saturated value of that label) and therefore in the fed-back mask and the
result — so refinement only predicts the rest and can never undo what the annotator drew. **Local refinement**
(:meth:`AnnotatorConstraint.within`, the ``refine_margin`` setting) also keeps every pixel farther than a margin
from all reviewed pixels as the annotator sent it, so a refinement changes the label only next to what they just
edited: measured in the simulated annotation loop, whole-image refinement ended below the corrected mask in 1-19 of
60 steps per data set, local refinement with a margin of a quarter of the correction's side in none
(``benchmarks/annotation_loop.py``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fanet_monai.feedback.masks import discrete_prediction, start_mask

__all__ = ["ANNOTATOR_CHANNELS", "WHERE_TO_LOOK", "AnnotatorConstraint", "check_refine_margin", "confidence_map",
           "instability_map", "near", "split_annotator_channels", "start_disagreement_map", "where_to_look"]

#: the where-to-look maps :func:`where_to_look` makes
WHERE_TO_LOOK = ("instability", "starts", "confidence")
#: ``IterativeRefinementInferer(start_mask=ANNOTATOR_CHANNELS)``: the inputs end with two channels, the annotator's
#: label codes and the reviewed mask (:class:`~fanet_monai.refine_label.StartMaskFromLabeld` with ``keep=True``).
ANNOTATOR_CHANNELS = "annotator_channels"
#: logits that saturate the sigmoid / softmax: a constrained pixel's label, beyond any threshold
SATURATED = 20.0


def check_refine_margin(margin: Any) -> int | None:
    """``refine_margin`` as given by a config, the CLI or a MONAI Label request: ``None`` (also ``"none"`` or
    ``""``: whole-image refinement) or a whole number of pixels/voxels ``>= 0``."""
    if margin is None or (isinstance(margin, str) and margin.strip().lower() in ("", "none", "null")):
        return None
    try:
        value = int(margin.strip()) if isinstance(margin, str) else margin
    except ValueError:
        value = None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"refine_margin must be a whole number of pixels/voxels >= 0 or none, got {margin!r}.")
    return int(value)


def near(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """``(B, 1, *spatial)`` bool: the pixels within ``margin`` pixels of a set pixel of ``mask`` along every axis
    (chessboard distance), ``mask`` itself included. A box dilation as one max-pooling per axis (separable:
    ``2 * margin + 1`` values per pixel and axis, not their cube); MONAI's ``utils_morphological_ops.dilate`` takes
    the whole box at once (and mis-pads a per-axis filter size in MONAI 1.6)."""
    out = mask.float()
    dims = mask.ndim - 2
    pool = F.max_pool2d if dims == 2 else F.max_pool3d
    for axis in range(dims if margin > 0 else 0):
        kernel, padding = [1] * dims, [0] * dims
        kernel[axis], padding[axis] = 2 * margin + 1, margin
        out = pool(out, kernel_size=kernel, stride=1, padding=padding)
    return out > 0.5


@dataclass
class AnnotatorConstraint:
    """What an annotator reviewed and drew.

    Attributes:
        labels: ``(B, 1, *spatial)`` label codes (0 background, 1..K classes): final where ``reviewed``; elsewhere
            the label as the annotator sent it (0 where they gave none), read only by :meth:`within`.
        reviewed: ``(B, 1, *spatial)`` bool: the pixels the annotator looked at (their label is final).
    """

    labels: torch.Tensor
    reviewed: torch.Tensor

    @classmethod
    def from_label(cls, label: torch.Tensor, unreviewed_value: int | None = None) -> "AnnotatorConstraint":
        """From one label map ``(B, 1, *spatial)``: every pixel is reviewed except those holding
        ``unreviewed_value`` (e.g. 255 for "not looked at yet"; ``None``: all reviewed)."""
        label = label.detach()
        reviewed = torch.ones_like(label, dtype=torch.bool) if unreviewed_value is None else label != unreviewed_value
        return cls(torch.where(reviewed, label, torch.zeros_like(label)).float(), reviewed)

    @classmethod
    def from_channels(cls, codes: torch.Tensor, reviewed: torch.Tensor) -> "AnnotatorConstraint":
        """From the two channels :class:`~fanet_monai.refine_label.StartMaskFromLabeld` appends with
        ``keep=True``: the annotator's label codes and the reviewed mask, ``(B, 1, *spatial)`` each, possibly
        interpolated on the way (2-D resizing): codes are rounded, reviewed is ``> 0.5``."""
        return cls(codes.detach().round().clamp(min=0).float(), reviewed.detach() > 0.5)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(b, 1 or K + 1, *spatial)`` with every reviewed pixel set to a saturated logit of the
        annotator's label (a new tensor); ``b`` rows must match the constraint's (see :meth:`rows`)."""
        reviewed = self.reviewed.to(logits.device)
        labels = self.labels.to(device=logits.device, dtype=logits.dtype)
        if logits.shape[1] == 1:
            target = torch.where(labels > 0, SATURATED, -SATURATED)
        else:
            classes = torch.arange(logits.shape[1], device=logits.device, dtype=logits.dtype)
            classes = classes.view(1, -1, *([1] * (logits.ndim - 2)))
            target = torch.where(labels == classes, SATURATED, -SATURATED)
        return torch.where(reviewed, target, logits)

    def within(self, margin: int | None) -> "AnnotatorConstraint":
        """Local refinement: also fix every pixel farther than ``margin`` pixels from all reviewed pixels
        (:func:`near`) to ``labels`` there — the label as the annotator sent it (0 where they gave none, e.g. at
        their ``unreviewed_value``). Refinement then changes the label only within ``margin`` of what the
        annotator reviewed; an image with nothing reviewed comes back as sent. ``None``: this constraint."""
        margin = check_refine_margin(margin)
        if margin is None:
            return self
        return AnnotatorConstraint(self.labels, self.reviewed | ~near(self.reviewed, margin))

    def rows(self, index: torch.Tensor) -> "AnnotatorConstraint":
        """The constraint of the images ``index`` (the active rows of an early-stopping batch)."""
        return AnnotatorConstraint(self.labels[index], self.reviewed[index])

    def repeat(self, times: int) -> "AnnotatorConstraint":
        """The constraint for ``times`` copies of the batch stacked along the batch axis."""
        return AnnotatorConstraint(self.labels.repeat(times, *([1] * (self.labels.ndim - 1))),
                                   self.reviewed.repeat(times, *([1] * (self.reviewed.ndim - 1))))


def split_annotator_channels(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, AnnotatorConstraint]:
    """``(images, start mask, constraint)`` from inputs ``(B, C + 2, *spatial)`` whose last two channels are the
    annotator's label codes and reviewed mask: the start mask is the label's foreground (``codes > 0.5``), the
    constraint keeps every reviewed pixel's label."""
    if inputs.shape[1] < 3:
        raise ValueError(
            f"start_mask={ANNOTATOR_CHANNELS!r} expects the image channels followed by the annotator's label and its "
            f"reviewed mask, got {inputs.shape[1]} channels (input shape {tuple(inputs.shape)})."
        )
    images, codes, reviewed = inputs[:, :-2], inputs[:, -2:-1], inputs[:, -1:]
    return images, (codes > 0.5).to(images.dtype), AnnotatorConstraint.from_channels(codes, reviewed)


def instability_map(passes: Sequence[torch.Tensor], threshold: float = 0.5) -> torch.Tensor:
    """Share of consecutive passes whose predicted label changed at each pixel: ``(B, 1, *spatial)`` in [0, 1]
    from the logits of every pass (:class:`~fanet_monai.inferers.Refinement` ``.passes``)."""
    labels = [discrete_prediction(logits, threshold) for logits in passes]
    if len(labels) < 2:
        return torch.zeros_like(labels[0])
    changes = sum((a != b).float() for a, b in zip(labels[1:], labels[:-1]))
    return changes / (len(labels) - 1)


def confidence_map(logits: torch.Tensor) -> torch.Tensor:
    """The confidence baseline, high where the final prediction is least sure: ``1 - |2 sigmoid - 1|`` for one
    channel, ``1 - (p_first - p_second)`` (softmax margin) for K + 1; ``(B, 1, *spatial)`` in [0, 1]."""
    logits = logits.detach().float()
    if logits.shape[1] == 1:
        return 1.0 - (2.0 * torch.sigmoid(logits) - 1.0).abs()
    top = torch.softmax(logits, dim=1).topk(2, dim=1).values
    return 1.0 - (top[:, :1] - top[:, 1:2])


def start_disagreement_map(answers: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Disagreement of ``S`` label maps ``answers`` ``(S, B, 1, *spatial)`` (one per start mask): ``1 - share of
    the most frequent label``, divided by its largest possible value ``1 - 1 / min(S, num_classes)`` (so an even
    split is 1, agreement 0); ``num_classes`` counts the background (2 for a binary model)."""
    starts = answers.shape[0]
    if starts < 2:
        return torch.zeros_like(answers[0])
    counts = torch.stack([(answers == c).float().sum(0) for c in range(num_classes)])  # (C, B, 1, *spatial)
    modal = counts.max(dim=0).values / starts
    return (1.0 - modal) / (1.0 - 1.0 / min(starts, num_classes))


def _start_masks(images: torch.Tensor, starts: Sequence[str], mask: torch.Tensor | None,
                 constraint: AnnotatorConstraint | None) -> list[torch.Tensor]:
    made = []
    for start in starts:
        if start == "otsu":
            made.append(start_mask(images, "otsu"))
        elif start == "empty":
            made.append(torch.zeros_like(images[:, :1]))
        elif start == "full":
            made.append(torch.ones_like(images[:, :1]))
        elif start == "given":
            if mask is None and constraint is None:
                raise ValueError("start 'given' needs mask= or constraint= (the annotator's label).")
            given = mask if mask is not None else (constraint.labels > 0).to(images.dtype)
            made.append(given.to(device=images.device, dtype=images.dtype))
        else:
            raise ValueError(f"unknown start {start!r}: expected 'otsu', 'empty', 'full' or 'given'.")
    return made


def where_to_look(
    inferer: Any,
    images: torch.Tensor,
    network: Callable[..., Any],
    method: str = "instability",
    mask: torch.Tensor | None = None,
    constraint: AnnotatorConstraint | None = None,
    starts: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine ``images`` with ``inferer`` (an :class:`~fanet_monai.inferers.IterativeRefinementInferer`) and return
    ``(logits, map)``: the logits the product returns (the refinement from ``mask``, else the configured start)
    and the where-to-look map ``method`` (see the module doc), ``(B, 1, *spatial)`` in [0, 1].

    ``"starts"`` refines from every start of ``starts`` (default: ``("given", "otsu", "empty", "full")`` when a
    mask or constraint is given, else ``("otsu", "empty", "full")``) in one batch; the first start's refinement
    is the returned logits. ``constraint`` keeps the annotator's reviewed pixels in every refinement."""
    if method not in WHERE_TO_LOOK:
        raise ValueError(f"where-to-look method must be one of {list(WHERE_TO_LOOK)}, got {method!r}.")
    if method != "starts":
        refinement = inferer.refine(images, network, mask=mask, constraint=constraint)
        logits = refinement.logits
        if method == "instability":
            return logits, instability_map(refinement.passes, inferer.threshold)
        return logits, confidence_map(logits)
    given = mask is not None or constraint is not None
    starts = tuple(starts or (("given", "otsu", "empty", "full") if given else ("otsu", "empty", "full")))
    masks = _start_masks(images, starts, mask, constraint)
    batch = images.shape[0]
    stacked_images = images.repeat(len(starts), *([1] * (images.ndim - 1)))
    stacked_masks = torch.cat(masks, dim=0)
    stacked_constraint = constraint.repeat(len(starts)) if constraint is not None else None
    logits = inferer.refine(stacked_images, network, mask=stacked_masks, constraint=stacked_constraint).logits
    answers = discrete_prediction(logits, inferer.threshold).view(len(starts), batch, 1, *images.shape[2:])
    num_classes = 2 if logits.shape[1] == 1 else logits.shape[1]
    return logits[:batch], start_disagreement_map(answers, num_classes)
