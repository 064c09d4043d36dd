"""Test-time iterative refinement: :class:`IterativeRefinementInferer`, and :class:`Refinement`, what its
:meth:`~IterativeRefinementInferer.refine` returns."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_tensor

from fanet_monai.feedback.masks import (
    check_feedback_mode,
    check_start_mask,
    discrete_prediction,
    feedback_mask,
    start_mask,
)
from fanet_monai.inferers.passes import check_mask, check_num_passes, converged
from fanet_monai.inferers.review import (ANNOTATOR_CHANNELS, AnnotatorConstraint, check_refine_margin,
                                         split_annotator_channels)

__all__ = ["ANNOTATOR_CHANNELS", "IterativeRefinementInferer", "Refinement", "LAST_CHANNEL", "INPUT_STARTS",
           "split_input_start"]

#: ``IterativeRefinementInferer(start_mask=LAST_CHANNEL)``: the inputs carry their start mask as the last channel.
LAST_CHANNEL = "last_channel"
#: start masks that the inputs carry (refine-my-mask): ``"last_channel"`` and ``"annotator_channels"``
INPUT_STARTS = (LAST_CHANNEL, ANNOTATOR_CHANNELS)


@dataclass
class Refinement:
    """What :meth:`IterativeRefinementInferer.refine` returns.

    Attributes:
        passes: ``num_passes`` float32 tensors ``(B, C, *spatial)``: the logits after pass 1, 2, ... (with early
            stop, a finished image repeats its final logits); ``C = 1`` (binary) or ``K + 1`` (K classes).
        num_passes: ``(B,)`` long: the number of network passes each image used.
        seconds: seconds from the start of the call until pass 1, 2, ... was done (CUDA synchronised).
    """

    passes: list[torch.Tensor]
    num_passes: torch.Tensor
    seconds: list[float]

    @property
    def logits(self) -> torch.Tensor:
        """``(B, C, *spatial)`` logits of the last pass."""
        return self.passes[-1]


def split_input_start(inputs: torch.Tensor, start_mask: str) -> tuple[torch.Tensor, torch.Tensor,
                                                                      AnnotatorConstraint | None]:
    """``(images, start mask, constraint or None)`` from inputs that carry their start (``start_mask`` one of
    :data:`INPUT_STARTS`): the last channel binarized at 0.5, or the annotator's two channels
    (:func:`~fanet_monai.inferers.review.split_annotator_channels`)."""
    if start_mask == ANNOTATOR_CHANNELS:
        return split_annotator_channels(inputs)
    return inputs[:, :-1], (inputs[:, -1:] > 0.5).to(inputs.dtype), None


class IterativeRefinementInferer(Inferer):
    """Runs a feedback network ``num_passes`` times, feeding each prediction back as the next pass's mask.

    The network takes one tensor ``(B, C + 1, *spatial)``: the ``C`` image channels, then the feedback mask; it
    returns logits ``(B, 1, *spatial)`` (binary, sigmoid) or ``(B, K + 1, *spatial)`` (K >= 2 classes, softmax,
    background in channel 0). Pass 1 receives ``mask`` (default: the start mask), pass ``k + 1`` receives
    :func:`~fanet_monai.feedback.masks.feedback_mask` of pass ``k``'s logits: one channel for any number of classes,
    the foreground of any class (see :mod:`fanet_monai.feedback.masks` for why one mask channel).

    Early stop (``early_stop=True``): after each pass ``k >= 2`` an image whose discrete prediction
    (:func:`~fanet_monai.feedback.masks.discrete_prediction`: ``sigmoid(logits) > threshold``, or the argmax label
    map for K + 1 channels) has :func:`converged` with that of pass ``k - 1`` is finished: it leaves the batch
    (later passes run the network on the still-active images only, so the cost drops), and it keeps its last
    logits. With ``tolerance=0`` an image stops as soon as its prediction stops changing; with binary feedback and a
    deterministic network this never changes the result, because the next input would be identical to the current
    one. :meth:`refine` returns how many passes each image used.

    Example::

        inferer = IterativeRefinementInferer(num_passes=10)  # paper: Otsu start, binarized feedback
        with torch.inference_mode():
            logits = inferer(images, net)  # images (B, 3, H, W) -> logits (B, 1, H, W) of pass 10

        # with sliding windows: the image and its mask are windowed together
        inferer = IterativeRefinementInferer(inner=SlidingWindowInferer(roi_size=(256, 256), overlap=0.25))

    Args:
        num_passes: number of network evaluations (paper: 10; variant B2 is one pass). ``>= 1``.
        start_mask: mask of the first pass when none is given: ``"otsu"`` (paper: Gaussian blur + per-image Otsu
            threshold, brighter than the threshold = foreground), ``"otsu_inverted"`` (darker = foreground),
            ``"empty"`` (zeros), ``"full"`` (ones), or a callable ``images (B, C, *spatial) -> (B, 1, *spatial)``;
            or ``"last_channel"``: the inputs' last channel is the start mask, binarized at 0.5 (refine-my-mask for
            callers such as MONAI Label that only call ``inferer(images, network)``: an existing label appended by
            :class:`~fanet_monai.refine_label.StartMaskFromLabeld`); or ``"annotator_channels"``: the inputs' last
            two channels are an annotator's label codes and the pixels they reviewed (``StartMaskFromLabeld`` with
            ``keep=True``): the label's foreground is the start mask and every reviewed pixel keeps the annotator's
            label at every pass (:class:`~fanet_monai.inferers.review.AnnotatorConstraint`), so refinement predicts
            only the rest.
        feedback: ``"binary"`` (paper: ``sigmoid(logits) > threshold`` as 0/1) or ``"probability"`` (the sigmoid
            map itself).
        threshold: probability threshold in ``(0, 1)`` for binary feedback and for the early-stop comparison (one
            output channel; K + 1 channels use the argmax).
        early_stop: stop refining an image once its binarized prediction stops changing (see above).
        tolerance: largest fraction of changed pixels, in ``[0, 1]``, that still counts as "stopped changing".
        inner: optional MONAI inferer run at every pass as ``inner(cat([images, mask], 1), network)`` (e.g.
            :class:`~monai.inferers.SlidingWindowInferer`: each window gets its own slice of the mask). ``None``
            calls ``network(x)`` directly.
        return_all_passes: ``__call__`` returns every pass's logits stacked as ``(num_passes, B, C, *spatial)``
            instead of the last pass's ``(B, C, *spatial)``. With early stop, a finished image repeats its final
            logits in the later passes.
        amp: run each pass under ``torch.autocast(device_type=images.device.type)``; outputs are float32.
        refine_margin: local refinement where an annotator's constraint is given (``constraint=`` or
            ``"annotator_channels"``): pixels farther than this many pixels/voxels from every reviewed pixel keep the
            annotator's label as sent (:meth:`~fanet_monai.inferers.review.AnnotatorConstraint.within`); ``None``
            (default): the passes may change any pixel that is not reviewed.
        reviewed_channel: the network has a reviewed channel (``FANet(reviewed_input=True)``): every pass gets
            ``(images, reviewed, mask)``, the reviewed pixels of the annotator's constraint (before
            ``refine_margin`` widens it), zeros without a constraint.

    Raises:
        ValueError: ``num_passes < 1``, unknown ``start_mask`` or ``feedback`` name, ``threshold``,
            ``tolerance`` or ``refine_margin`` out of range.
    """

    def __init__(
        self,
        num_passes: int = 10,
        start_mask: str | Callable[[torch.Tensor], torch.Tensor] = "otsu",
        feedback: str = "binary",
        threshold: float = 0.5,
        early_stop: bool = False,
        tolerance: float = 0.0,
        inner: Inferer | None = None,
        return_all_passes: bool = False,
        amp: bool = False,
        refine_margin: int | None = None,
        reviewed_channel: bool = False,
    ) -> None:
        super().__init__()
        self.num_passes = check_num_passes(num_passes)
        self.refine_margin = check_refine_margin(refine_margin)
        if start_mask not in INPUT_STARTS:
            check_start_mask(start_mask, allow_callable=True)
        check_feedback_mode(feedback)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}.")
        if not 0.0 <= tolerance <= 1.0:
            raise ValueError(f"tolerance must lie in [0, 1], got {tolerance}.")
        if inner is not None and not callable(inner):
            raise ValueError(f"inner must be a MONAI Inferer (callable) or None, got {type(inner).__name__}.")
        self.start_mask = start_mask
        self.feedback = feedback
        self.threshold = float(threshold)
        self.early_stop = bool(early_stop)
        self.tolerance = float(tolerance)
        self.inner = inner
        self.return_all_passes = bool(return_all_passes)
        self.amp = bool(amp)
        self.reviewed_channel = bool(reviewed_channel)

    def make_start_mask(self, images: torch.Tensor) -> torch.Tensor:
        """The configured start mask of ``images`` ``(B, C, *spatial)``: ``(B, 1, *spatial)`` on their device, in
        their dtype (:func:`~fanet_monai.feedback.masks.start_mask`)."""
        return start_mask(images, self.start_mask)

    def _run_pass(self, x: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """One network evaluation on ``x`` ``(b, C + 1, *spatial)``; returns float32 logits ``(b, 1 or K + 1,
        *spatial)``."""
        with torch.autocast(device_type=x.device.type, enabled=self.amp):
            out = self.inner(x, network, *args, **kwargs) if self.inner is not None else network(x, *args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the network (or inner inferer) must return a tensor, got {type(out).__name__}.")
        out = convert_to_tensor(out, track_meta=False)
        channels_ok = out.ndim == x.ndim and (out.shape[1] == 1 or out.shape[1] >= 3)
        if out.shape[0] != x.shape[0] or not channels_ok or out.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"expected logits of shape {(x.shape[0], 1, *x.shape[2:])} for an input of shape {tuple(x.shape)}, "
                f"got {tuple(out.shape)}: feedback needs one output channel (binary) or K + 1 >= 3 (K classes) at "
                "the input's spatial size."
            )
        return out.float()

    def iterate(
        self,
        images: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        mask: torch.Tensor | None = None,
        constraint: AnnotatorConstraint | None = None,
        **kwargs: Any,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(logits, num_passes)`` after every pass; the single code path behind :meth:`refine` and
        :meth:`__call__`.

        Args:
            images: ``(B, C, *spatial)`` images (image channels only), on any device.
            network: callable taking ``(b, C + 1, *spatial)`` and returning logits ``(b, 1, *spatial)`` (binary)
                or ``(b, K + 1, *spatial)`` (K classes).
            args: extra positional arguments for ``network`` (or ``inner``).
            mask: ``(B, 1, *spatial)`` mask of the first pass; ``None`` for the configured start mask.
            constraint: an annotator's reviewed pixels and labels (:class:`~fanet_monai.inferers.review.
                AnnotatorConstraint`), kept at every pass: in the logits, hence in the fed mask and the result.
            kwargs: extra keyword arguments for ``network`` (or ``inner``).

        Yields:
            ``num_passes`` times: float32 logits ``(B, 1 or K + 1, *spatial)`` of every image (a finished image of
            an early stop repeats its final logits; each is a new tensor, never modified later) and a ``(B,)`` long
            tensor of the passes each image has used so far.
        """
        images = convert_to_tensor(images, track_meta=False)
        if images.ndim < 3:
            raise ValueError(f"images must be (B, C, *spatial), got shape {tuple(images.shape)}.")
        if not images.is_floating_point():
            images = images.float()
        if self.start_mask == LAST_CHANNEL and mask is not None:
            raise ValueError("start_mask='last_channel' takes the mask from the inputs: do not pass mask= too.")
        if self.start_mask == ANNOTATOR_CHANNELS and (mask is not None or constraint is not None):
            raise ValueError(f"start_mask={ANNOTATOR_CHANNELS!r} takes the annotator's label from the inputs: do "
                             "not pass mask= or constraint= too.")
        if self.start_mask in INPUT_STARTS:
            images, mask, constraint = split_input_start(images, self.start_mask)
        check_mask(images, mask)
        reviewed = None  # the annotator's own reviewed pixels, before refine_margin widens the constraint
        if constraint is not None:
            reviewed = constraint.reviewed
            constraint = constraint.within(self.refine_margin)
        batch = images.shape[0]
        if mask is None:
            mask = self.make_start_mask(images)
        else:  # our own copy: the active rows are updated in place below
            mask = convert_to_tensor(mask, track_meta=False).to(device=images.device, dtype=images.dtype, copy=True)
        if self.reviewed_channel:  # after the start mask, which is made from the image channels alone
            channel = (torch.zeros_like(images[:, :1]) if reviewed is None
                       else reviewed.to(device=images.device, dtype=images.dtype))
            images = torch.cat([images, channel], dim=1)
        passes_used = torch.zeros(batch, dtype=torch.long, device=images.device)
        active = torch.arange(batch, device=images.device)  # indices of the images still being refined
        previous: torch.Tensor | None = None  # (B, 1, *spatial): discrete prediction of the previous pass
        out: torch.Tensor | None = None  # (B, 1 or K + 1, *spatial) latest logits of every image

        for k in range(1, self.num_passes + 1):
            if active.numel() == 0:  # every image finished early: repeat the final logits
                assert out is not None
                yield out, passes_used.clone()
                continue
            subset = active.numel() < batch
            x = torch.cat([images[active], mask[active]] if subset else [images, mask], dim=1)
            logits = self._run_pass(x, network, *args, **kwargs)
            if constraint is not None:
                logits = (constraint.rows(active) if subset else constraint).apply(logits)
            if out is None or not subset:
                out = logits
            else:
                out = out.clone()
                out[active] = logits
            passes_used[active] = k
            fed = feedback_mask(logits, self.feedback, self.threshold).to(images.dtype)
            if subset:  # ``mask`` is our own tensor from pass 2 on: update the active rows in place
                mask[active] = fed
            else:
                mask = fed
            if self.early_stop:
                labels = discrete_prediction(logits, self.threshold)  # 0/1, or 0..K for K + 1 channels
                if previous is None:
                    previous = labels
                else:
                    done = converged(labels, previous[active], self.tolerance)
                    previous[active] = labels
                    active = active[~done]  # finished images leave the batch
            yield out, passes_used.clone()

    def refine(
        self,
        images: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        mask: torch.Tensor | None = None,
        constraint: AnnotatorConstraint | None = None,
        **kwargs: Any,
    ) -> Refinement:
        """Refine ``images`` and return every pass, the passes each image used and the time to each pass.

        Same arguments as :meth:`iterate`; returns a :class:`Refinement`. The where-to-look maps of a refinement:
        :func:`fanet_monai.inferers.review.where_to_look`.
        """
        synchronize = images.device.type == "cuda"
        passes: list[torch.Tensor] = []
        seconds: list[float] = []
        used = torch.zeros(0, dtype=torch.long)
        start = time.perf_counter()
        for logits, used in self.iterate(images, network, *args, mask=mask, constraint=constraint, **kwargs):
            if synchronize:
                torch.cuda.synchronize(images.device)
            seconds.append(time.perf_counter() - start)
            passes.append(logits)
        return Refinement(passes=passes, num_passes=used, seconds=seconds)

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        mask: torch.Tensor | None = None,
        constraint: AnnotatorConstraint | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Refine ``inputs`` with ``network``.

        Args:
            inputs: ``(B, C, *spatial)`` images (image channels only, as MONAI Label and evaluators pass them).
            network: callable taking ``(b, C + 1, *spatial)`` (images, then mask) and returning logits
                ``(b, 1, *spatial)`` or ``(b, K + 1, *spatial)``; a TorchScript module works.
            args: extra positional arguments for ``network`` (or ``inner``).
            mask: ``(B, 1, *spatial)`` mask of the first pass; ``None`` for the configured start mask.
            constraint: pixels an annotator reviewed, kept at every pass (see :meth:`iterate`).
            kwargs: extra keyword arguments for ``network`` (or ``inner``).

        Returns:
            float32 logits ``(B, 1 or K + 1, *spatial)`` of the last pass (a :class:`~monai.data.MetaTensor`
            carrying ``inputs``' metadata when ``inputs`` is one), or, with ``return_all_passes``, every pass's
            logits stacked as a plain tensor ``(num_passes, B, 1 or K + 1, *spatial)``.
        """
        steps = self.iterate(inputs, network, *args, mask=mask, constraint=constraint, **kwargs)
        if self.return_all_passes:
            return torch.stack([logits for logits, _ in steps], dim=0)
        out: torch.Tensor | None = None
        for out, _ in steps:
            pass  # keep only the latest pass in memory
        assert out is not None  # num_passes >= 1
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(out)
            out.copy_meta_from(inputs)
        return out
