"""FANet's inferers: test-time iterative refinement and training-time unrolled feedback.

FANet (Tomar et al., IEEE TNNLS 2022) evaluates an image several times: the first pass gets a start mask (Otsu's
threshold of the blurred image), every later pass gets the previous prediction, binarized, as its feedback mask.

Both inferers are called as MONAI calls an inferer, ``inferer(images, network, mask=None)``: ``images`` holds the
image channels only ``(B, C, *spatial)``; ``mask`` ``(B, 1, *spatial)`` is the first pass's mask, ``None`` for the
inferer's configured start mask (:func:`~fanet_monai.feedback.masks.start_mask`). Only the inferers build the
network's one-tensor input ``cat([images, mask], 1)``. The trainer hands each sample's fed mask over with MONAI's
``PrepareBatchExtraInput({"mask": "mask"})``; MONAI Label, MONAI Deploy and the evaluators call
``inferer(images, network)``. The inferers keep no per-call state: :meth:`IterativeRefinementInferer.refine`
returns every pass explicitly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_tensor

from fanet_monai.feedback.masks import check_feedback_mode, check_start_mask, feedback_mask, start_mask

__all__ = [
    "IterativeRefinementInferer",
    "Refinement",
    "UnrolledFeedbackInferer",
    "converged",
    "early_stop_passes",
]


def converged(current: torch.Tensor, previous: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The early-stop rule: which images' binarized predictions stopped changing.

    Args:
        current: ``(B, 1, *spatial)`` boolean masks of a pass.
        previous: the same images' masks of the pass before.
        tolerance: largest fraction of changed pixels, in ``[0, 1]``, that still counts as "stopped changing".

    Returns:
        ``(B,)`` bool: the fraction of pixels that differ is at most ``tolerance`` (computed in float64, exact for
        ``tolerance = k / n``).
    """
    changed = (current != previous).flatten(1).sum(dim=1).double() / current[0].numel()
    return changed <= tolerance


def early_stop_passes(binary: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Per image, the pass at which :class:`IterativeRefinementInferer` with ``early_stop=True`` stops, from the
    binarized masks of a run without early stop: the first pass ``k >= 2`` that :func:`converged` with pass ``k - 1``,
    ``num_passes`` if there is none. Taking pass ``k``'s prediction for each image gives the early-stop result.

    Args:
        binary: ``(num_passes, B, 1, *spatial)`` boolean masks of passes 1 .. ``num_passes``.
        tolerance: as in :func:`converged`.

    Returns:
        ``(B,)`` long tensor of passes used, in ``1 .. num_passes``, on ``binary``'s device.
    """
    if binary.ndim < 4:
        raise ValueError(f"expected (num_passes, B, 1, *spatial) masks, got shape {tuple(binary.shape)}.")
    num_passes, batch = binary.shape[:2]
    used = torch.full((batch,), num_passes, dtype=torch.long, device=binary.device)
    for k in range(num_passes - 1, 0, -1):  # last to first: the earliest stopping pass wins
        used = torch.where(converged(binary[k], binary[k - 1], tolerance), k + 1, used)
    return used


def _check_num_passes(num_passes: Any) -> int:
    if isinstance(num_passes, bool) or int(num_passes) != num_passes or num_passes < 1:
        raise ValueError(f"num_passes must be an integer >= 1, got {num_passes!r}.")
    return int(num_passes)


def _check_mask(images: torch.Tensor, mask: torch.Tensor | None) -> None:
    if mask is None:
        return
    expected = (images.shape[0], 1, *images.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"mask must have shape {expected} (B, 1, *spatial) for images of shape {tuple(images.shape)}, "
            f"got {tuple(mask.shape)}."
        )


@dataclass
class Refinement:
    """What :meth:`IterativeRefinementInferer.refine` returns.

    Attributes:
        passes: ``num_passes`` float32 tensors ``(B, 1, *spatial)``: the logits after pass 1, 2, ... (with early
            stop, a finished image repeats its final logits).
        num_passes: ``(B,)`` long: the number of network passes each image used.
        seconds: seconds from the start of the call until pass 1, 2, ... was done (CUDA synchronised).
    """

    passes: list[torch.Tensor]
    num_passes: torch.Tensor
    seconds: list[float]

    @property
    def logits(self) -> torch.Tensor:
        """``(B, 1, *spatial)`` logits of the last pass."""
        return self.passes[-1]


class IterativeRefinementInferer(Inferer):
    """Runs a feedback network ``num_passes`` times, feeding each prediction back as the next pass's mask.

    The network takes one tensor ``(B, C + 1, *spatial)``: the ``C`` image channels, then the feedback mask; it
    returns logits ``(B, 1, *spatial)``. Pass 1 receives ``mask`` (default: the start mask), pass ``k + 1``
    receives :func:`~fanet_monai.feedback.masks.feedback_mask` of pass ``k``'s logits.

    Early stop (``early_stop=True``): after each pass ``k >= 2`` an image whose binarized prediction
    (``sigmoid(logits) > threshold``) has :func:`converged` with that of pass ``k - 1`` is finished: it leaves the
    batch (later passes run the network on the still-active images only, so the cost drops), and it keeps its
    last logits. With ``tolerance=0`` an image stops as soon as its binarized prediction stops changing; with
    binary feedback and a deterministic network this never changes the result, because the next input would be
    identical to the current one. :meth:`refine` returns how many passes each image used.

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
            ``"empty"`` (zeros), ``"full"`` (ones), or a callable ``images (B, C, *spatial) -> (B, 1, *spatial)``.
        feedback: ``"binary"`` (paper: ``sigmoid(logits) > threshold`` as 0/1) or ``"probability"`` (the sigmoid
            map itself).
        threshold: probability threshold in ``(0, 1)`` for binary feedback and for the early-stop comparison.
        early_stop: stop refining an image once its binarized prediction stops changing (see above).
        tolerance: largest fraction of changed pixels, in ``[0, 1]``, that still counts as "stopped changing".
        inner: optional MONAI inferer run at every pass as ``inner(cat([images, mask], 1), network)`` (e.g.
            :class:`~monai.inferers.SlidingWindowInferer`: each window gets its own slice of the mask). ``None``
            calls ``network(x)`` directly.
        return_all_passes: ``__call__`` returns every pass's logits stacked as ``(num_passes, B, 1, *spatial)``
            instead of the last pass's ``(B, 1, *spatial)``. With early stop, a finished image repeats its final
            logits in the later passes.
        amp: run each pass under ``torch.autocast(device_type=images.device.type)``; outputs are float32.

    Raises:
        ValueError: ``num_passes < 1``, unknown ``start_mask`` or ``feedback`` name, ``threshold`` or
            ``tolerance`` out of range.
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
    ) -> None:
        super().__init__()
        self.num_passes = _check_num_passes(num_passes)
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

    def make_start_mask(self, images: torch.Tensor) -> torch.Tensor:
        """The configured start mask of ``images`` ``(B, C, *spatial)``: ``(B, 1, *spatial)`` on their device, in
        their dtype (:func:`~fanet_monai.feedback.masks.start_mask`)."""
        return start_mask(images, self.start_mask)

    def _run_pass(self, x: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """One network evaluation on ``x`` ``(b, C + 1, *spatial)``; returns float32 logits ``(b, 1, *spatial)``."""
        with torch.autocast(device_type=x.device.type, enabled=self.amp):
            out = self.inner(x, network, *args, **kwargs) if self.inner is not None else network(x, *args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the network (or inner inferer) must return a tensor, got {type(out).__name__}.")
        out = convert_to_tensor(out, track_meta=False)
        if out.shape[0] != x.shape[0] or out.shape[1] != 1 or out.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"expected logits of shape {(x.shape[0], 1, *x.shape[2:])} for an input of shape {tuple(x.shape)}, "
                f"got {tuple(out.shape)}: feedback needs one output channel at the input's spatial size."
            )
        return out.float()

    def iterate(
        self,
        images: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(logits, num_passes)`` after every pass; the single code path behind :meth:`refine` and
        :meth:`__call__`.

        Args:
            images: ``(B, C, *spatial)`` images (image channels only), on any device.
            network: callable taking ``(b, C + 1, *spatial)`` and returning logits ``(b, 1, *spatial)``.
            args: extra positional arguments for ``network`` (or ``inner``).
            mask: ``(B, 1, *spatial)`` mask of the first pass; ``None`` for the configured start mask.
            kwargs: extra keyword arguments for ``network`` (or ``inner``).

        Yields:
            ``num_passes`` times: float32 logits ``(B, 1, *spatial)`` of every image (a finished image of an early
            stop repeats its final logits; each is a new tensor, never modified later) and a ``(B,)`` long tensor
            of the passes each image has used so far.
        """
        images = convert_to_tensor(images, track_meta=False)
        if images.ndim < 3:
            raise ValueError(f"images must be (B, C, *spatial), got shape {tuple(images.shape)}.")
        if not images.is_floating_point():
            images = images.float()
        _check_mask(images, mask)
        batch = images.shape[0]
        if mask is None:
            mask = self.make_start_mask(images)
        else:  # our own copy: the active rows are updated in place below
            mask = convert_to_tensor(mask, track_meta=False).to(device=images.device, dtype=images.dtype, copy=True)
        passes_used = torch.zeros(batch, dtype=torch.long, device=images.device)
        active = torch.arange(batch, device=images.device)  # indices of the images still being refined
        previous: torch.Tensor | None = None  # (B, 1, *spatial) bool: binarized prediction of the previous pass
        out: torch.Tensor | None = None  # (B, 1, *spatial) latest logits of every image

        for k in range(1, self.num_passes + 1):
            if active.numel() == 0:  # every image finished early: repeat the final logits
                assert out is not None
                yield out, passes_used.clone()
                continue
            subset = active.numel() < batch
            x = torch.cat([images[active], mask[active]] if subset else [images, mask], dim=1)
            logits = self._run_pass(x, network, *args, **kwargs)
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
                binary = torch.sigmoid(logits) > self.threshold
                if previous is None:
                    previous = binary
                else:
                    done = converged(binary, previous[active], self.tolerance)
                    previous[active] = binary
                    active = active[~done]  # finished images leave the batch
            yield out, passes_used.clone()

    def refine(
        self,
        images: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Refinement:
        """Refine ``images`` and return every pass, the passes each image used and the time to each pass.

        Same arguments as :meth:`iterate`; returns a :class:`Refinement`.
        """
        synchronize = images.device.type == "cuda"
        passes: list[torch.Tensor] = []
        seconds: list[float] = []
        used = torch.zeros(0, dtype=torch.long)
        start = time.perf_counter()
        for logits, used in self.iterate(images, network, *args, mask=mask, **kwargs):
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
        **kwargs: Any,
    ) -> torch.Tensor:
        """Refine ``inputs`` with ``network``.

        Args:
            inputs: ``(B, C, *spatial)`` images (image channels only, as MONAI Label and evaluators pass them).
            network: callable taking ``(b, C + 1, *spatial)`` (images, then mask) and returning logits
                ``(b, 1, *spatial)``; a TorchScript module works.
            args: extra positional arguments for ``network`` (or ``inner``).
            mask: ``(B, 1, *spatial)`` mask of the first pass; ``None`` for the configured start mask.
            kwargs: extra keyword arguments for ``network`` (or ``inner``).

        Returns:
            float32 logits ``(B, 1, *spatial)`` of the last pass (a :class:`~monai.data.MetaTensor` carrying
            ``inputs``' metadata when ``inputs`` is one), or, with ``return_all_passes``, every pass's logits
            stacked as a plain tensor ``(num_passes, B, 1, *spatial)``.
        """
        steps = self.iterate(inputs, network, *args, mask=mask, **kwargs)
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


class UnrolledFeedbackInferer(Inferer):
    """Training-time unrolled refinement: train on the prediction made after ``num_passes - 1`` feedback passes.

    Used as the trainer's inferer, called ``inferer(images, network, mask=mask)`` with the mask the feedback
    source chose for each sample (:class:`~fanet_monai.feedback.transforms.FeedbackMaskd`: the previous-epoch
    prediction, the start mask, or a mix), or without ``mask`` for the configured start mask. Passes
    ``1 .. num_passes - 1`` run without gradient, each feeding its binarized (or probability) prediction to the
    next, exactly as :class:`IterativeRefinementInferer` does at test time; pass ``num_passes`` runs with gradient.
    ``num_passes=1`` is plain single-pass training on the fed mask.

    Args:
        num_passes: passes per training step, ``>= 1``.
        feedback: ``"binary"`` or ``"probability"``, as at test time.
        threshold: probability threshold of binary feedback.
        loss_on_every_pass: also keep the gradient of passes ``1 .. num_passes - 1`` and return every pass's logits
            stacked along the channel dimension ``(B, num_passes, *spatial)`` (pass ``k`` in channel ``k - 1``), for
            :class:`~fanet_monai.losses.PassAveragedLoss`. Otherwise returns the last pass ``(B, 1, *spatial)``.
        start_mask: the first pass's mask when the call gives none (see :class:`IterativeRefinementInferer`).

    The fed masks themselves are never differentiated through (they are thresholded, or detached probabilities).
    """

    def __init__(
        self,
        num_passes: int = 2,
        feedback: str = "binary",
        threshold: float = 0.5,
        loss_on_every_pass: bool = False,
        start_mask: str | Callable[[torch.Tensor], torch.Tensor] = "otsu",
    ) -> None:
        super().__init__()
        self.num_passes = _check_num_passes(num_passes)
        check_feedback_mode(feedback)
        check_start_mask(start_mask, allow_callable=True)
        self.feedback = feedback
        self.threshold = float(threshold)
        self.loss_on_every_pass = bool(loss_on_every_pass)
        self.start_mask = start_mask

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Run the unrolled passes.

        Args:
            inputs: ``(B, C, *spatial)`` images.
            network: callable ``(B, C + 1, *spatial) -> (B, 1, *spatial)`` logits.
            args: extra positional arguments for ``network``.
            mask: ``(B, 1, *spatial)`` mask of the first pass; ``None`` for the configured start mask.
            kwargs: extra keyword arguments for ``network``.

        Returns:
            ``(B, 1, *spatial)`` logits of the last pass, or ``(B, num_passes, *spatial)`` with
            ``loss_on_every_pass``.
        """
        _check_mask(inputs, mask)
        mask = start_mask(inputs, self.start_mask) if mask is None else mask.to(inputs.dtype)
        outputs = []
        for k in range(1, self.num_passes + 1):
            with_grad = torch.is_grad_enabled() and (k == self.num_passes or self.loss_on_every_pass)
            with torch.set_grad_enabled(with_grad):
                logits = network(torch.cat([inputs, mask], dim=1), *args, **kwargs)
            outputs.append(logits)
            mask = feedback_mask(logits, self.feedback, self.threshold).to(inputs.dtype)
        if self.loss_on_every_pass:
            return torch.cat(outputs, dim=1)
        return outputs[-1]
