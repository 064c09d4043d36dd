"""Test-time iterative refinement for FANet: start mask, N feedback passes, optional early stop and inner inferer.

FANet (Tomar et al., IEEE TNNLS 2022) evaluates a test image several times: the first pass gets an initial mask
(Otsu's threshold of the blurred image), every later pass gets the previous prediction, binarized, as its feedback
mask. :class:`IterativeRefinementInferer` is a MONAI :class:`~monai.inferers.Inferer`, so bundles, evaluators and
MONAI Label call it like any other inferer with the *image only*; it builds the mask channel itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

__all__ = ["IterativeRefinementInferer", "UnrolledFeedbackInferer", "START_MASKS", "FEEDBACK_MODES", "start_mask"]

START_MASKS: tuple[str, ...] = ("otsu", "otsu_inverted", "empty", "full")
FEEDBACK_MODES: tuple[str, ...] = ("binary", "probability")


def start_mask(images: torch.Tensor, kind: str = "otsu") -> torch.Tensor:
    """The first feedback mask of ``images`` ``(B, C, *spatial)``: ``(B, 1, *spatial)`` on their device and dtype.

    ``kind``: ``"otsu"`` (paper: blurred grayscale brighter than Otsu's threshold), ``"otsu_inverted"`` (darker than
    the threshold, for dark targets such as vessels and membranes), ``"empty"`` (zeros) or ``"full"`` (ones).
    Training (first epoch of the feedback cache) and test time (first refinement pass) use the same function.
    """
    if kind not in START_MASKS:
        raise ValueError(f"start mask must be one of {list(START_MASKS)}, got {kind!r}.")
    if isinstance(images, MetaTensor):
        images = images.as_tensor()
    shape = (images.shape[0], 1, *images.shape[2:])
    if kind == "empty":
        return torch.zeros(shape, device=images.device, dtype=images.dtype)
    if kind == "full":
        return torch.ones(shape, device=images.device, dtype=images.dtype)
    from fanet_monai.feedback.otsu import otsu_mask_torch

    return otsu_mask_torch(images, invert=kind == "otsu_inverted").to(device=images.device, dtype=images.dtype)


class IterativeRefinementInferer(Inferer):
    """Runs a feedback network ``num_passes`` times, feeding each prediction back as the next pass's mask.

    The network takes one tensor ``(B, C + 1, *spatial)``: the ``C`` image channels, then the feedback mask; it
    returns logits ``(B, 1, *spatial)``. Pass 1 receives the start mask, pass ``k + 1`` receives
    ``feedback(logits of pass k)``.

    Early stop (``early_stop=True``): after each pass ``k >= 2`` an image whose binarized prediction
    (``sigmoid(logits) > threshold``) differs from that of pass ``k - 1`` on at most a fraction ``tolerance`` of
    its pixels is finished: it leaves the batch (later passes run the network on the still-active images only, so
    the cost drops), and it keeps its last logits. With ``tolerance=0`` an image stops as soon as its binarized
    prediction stops changing; with binary feedback and a deterministic network this never changes the result,
    because the next input would be identical to the current one. The number of passes each image used is
    stored in :attr:`last_num_passes` after a call.

    Example::

        inferer = IterativeRefinementInferer(num_passes=10)  # paper: Otsu start, binarized feedback
        with torch.inference_mode():
            logits = inferer(images, net)  # images (B, 3, H, W) -> logits (B, 1, H, W) of pass 10

        # with sliding windows: the image and its mask are windowed together
        inferer = IterativeRefinementInferer(inner=SlidingWindowInferer(roi_size=(256, 256), overlap=0.25))

    Args:
        num_passes: number of network evaluations (paper: 10; variant B2 is one pass). ``>= 1``.
        start_mask: mask of the first pass: ``"otsu"`` (paper: Gaussian blur + per-image Otsu threshold, brighter
            than the threshold = foreground), ``"otsu_inverted"`` (darker = foreground), ``"empty"`` (zeros),
            ``"full"`` (ones), or a callable ``images (B, C, *spatial) -> mask (B, 1, *spatial)``.
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
        amp: run each pass under ``torch.autocast(device_type=inputs.device.type)``; outputs are float32.

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
        if isinstance(num_passes, bool) or int(num_passes) != num_passes or num_passes < 1:
            raise ValueError(f"num_passes must be an integer >= 1, got {num_passes!r}.")
        if isinstance(start_mask, str):
            if start_mask not in START_MASKS:
                raise ValueError(f"start_mask must be one of {list(START_MASKS)} or a callable, got {start_mask!r}.")
        elif not callable(start_mask):
            raise ValueError(f"start_mask must be one of {list(START_MASKS)} or a callable, got {start_mask!r}.")
        if feedback not in FEEDBACK_MODES:
            raise ValueError(f"feedback must be one of {list(FEEDBACK_MODES)}, got {feedback!r}.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}.")
        if not 0.0 <= tolerance <= 1.0:
            raise ValueError(f"tolerance must lie in [0, 1], got {tolerance}.")
        if inner is not None and not callable(inner):
            raise ValueError(f"inner must be a MONAI Inferer (callable) or None, got {type(inner).__name__}.")
        self.num_passes = int(num_passes)
        self.start_mask = start_mask
        self.feedback = feedback
        self.threshold = float(threshold)
        self.early_stop = bool(early_stop)
        self.tolerance = float(tolerance)
        self.inner = inner
        self.return_all_passes = bool(return_all_passes)
        self.amp = bool(amp)
        #: ``(B,)`` long tensor: number of network passes each image of the last call used (``num_passes`` for all
        #: images without early stop). ``None`` before the first call.
        self.last_num_passes: torch.Tensor | None = None

    def make_start_mask(self, images: torch.Tensor) -> torch.Tensor:
        """Mask of the first pass.

        Args:
            images: ``(B, C, *spatial)`` images.

        Returns:
            ``(B, 1, *spatial)`` mask on ``images``' device, in ``images``' dtype.
        """
        shape = (images.shape[0], 1, *images.shape[2:])
        if callable(self.start_mask):
            mask = self.start_mask(images)
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape:
                got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise ValueError(f"start_mask callable must return a tensor of shape {shape}, got {got}.")
        else:
            mask = start_mask(images, self.start_mask)
        if isinstance(mask, MetaTensor):
            mask = mask.as_tensor()
        return mask.to(device=images.device, dtype=images.dtype)

    def feedback_mask(self, logits: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Mask fed to the next pass.

        Args:
            logits: ``(B, 1, *spatial)`` logits of the current pass.
            dtype: dtype of the returned mask.

        Returns:
            ``(B, 1, *spatial)``: ``sigmoid(logits) > threshold`` as 0/1 (binary feedback) or ``sigmoid(logits)``.
        """
        prob = torch.sigmoid(logits)
        return self._feedback_from_prob(prob, prob > self.threshold, dtype)

    def _feedback_from_prob(self, prob: torch.Tensor, binary: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Feedback mask from the probabilities ``prob`` and their binarization ``binary`` (same shape)."""
        return (binary if self.feedback == "binary" else prob).to(dtype)

    def _run_pass(self, x: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """One network evaluation on ``x`` ``(b, C + 1, *spatial)``; returns float32 logits ``(b, 1, *spatial)``."""
        with torch.autocast(device_type=x.device.type, enabled=self.amp):
            out = self.inner(x, network, *args, **kwargs) if self.inner is not None else network(x, *args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the network (or inner inferer) must return a tensor, got {type(out).__name__}.")
        if isinstance(out, MetaTensor):
            out = out.as_tensor()
        if out.shape[0] != x.shape[0] or out.shape[1] != 1 or out.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"expected logits of shape {(x.shape[0], 1, *x.shape[2:])} for an input of shape {tuple(x.shape)}, "
                f"got {tuple(out.shape)}: feedback needs one output channel at the input's spatial size."
            )
        return out.float()

    def iterate(
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Iterator[torch.Tensor]:
        """Yield the logits of every pass; the single code path behind :meth:`__call__`.

        Args:
            inputs: ``(B, C, *spatial)`` images (image channels only), on any device.
            network: callable taking ``(b, C + 1, *spatial)`` and returning logits ``(b, 1, *spatial)``.
            args: extra positional arguments for ``network`` (or ``inner``).
            kwargs: extra keyword arguments for ``network`` (or ``inner``).

        Yields:
            ``num_passes`` float32 tensors ``(B, 1, *spatial)``: the logits after pass 1, 2, ... (a finished image
            of an early stop repeats its final logits). Each yielded tensor is a new tensor, never modified later.
            :attr:`last_num_passes` is updated as the passes run.
        """
        images = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        if images.ndim < 3:
            raise ValueError(f"inputs must be (B, C, *spatial) images, got shape {tuple(images.shape)}.")
        if not images.is_floating_point():
            images = images.float()
        batch = images.shape[0]
        mask = self.make_start_mask(images)
        passes_used = torch.zeros(batch, dtype=torch.long, device=images.device)
        self.last_num_passes = passes_used
        active = torch.arange(batch, device=images.device)  # indices of the images still being refined
        previous: torch.Tensor | None = None  # (B, 1, *spatial) bool: binarized prediction of the previous pass
        out: torch.Tensor | None = None  # (B, 1, *spatial) latest logits of every image

        for k in range(1, self.num_passes + 1):
            if active.numel() == 0:  # every image finished early: repeat the final logits
                assert out is not None
                yield out
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
            prob = torch.sigmoid(logits)
            binary = prob > self.threshold
            if subset:  # ``mask`` is our own tensor from pass 2 on: update the active rows in place
                mask[active] = self._feedback_from_prob(prob, binary, images.dtype)
            else:
                mask = self._feedback_from_prob(prob, binary, images.dtype)
            if self.early_stop:
                changed = None  # fraction of changed pixels per active image (float64: exact for tolerance = k / n)
                if previous is not None:
                    changed = (binary != previous[active]).flatten(1).sum(dim=1).double() / binary[0].numel()
                if subset:
                    previous[active] = binary  # type: ignore[index]
                else:
                    previous = binary
                if changed is not None:  # pass >= 2: finished images leave the batch
                    active = active[changed > self.tolerance]
            yield out

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Refine ``inputs`` with ``network``.

        Args:
            inputs: ``(B, C, *spatial)`` images (image channels only, as MONAI Label and evaluators pass them).
            network: callable taking ``(b, C + 1, *spatial)`` (images, then mask) and returning logits
                ``(b, 1, *spatial)``; a TorchScript module works.
            args: extra positional arguments for ``network`` (or ``inner``).
            kwargs: extra keyword arguments for ``network`` (or ``inner``).

        Returns:
            float32 logits ``(B, 1, *spatial)`` of the last pass (a :class:`~monai.data.MetaTensor` carrying
            ``inputs``' metadata when ``inputs`` is one), or, with ``return_all_passes``, every pass's logits
            stacked as a plain tensor ``(num_passes, B, 1, *spatial)``.
        """
        if self.return_all_passes:
            return torch.stack(list(self.iterate(inputs, network, *args, **kwargs)), dim=0)
        out: torch.Tensor | None = None
        for out in self.iterate(inputs, network, *args, **kwargs):
            pass  # keep only the latest pass in memory
        assert out is not None  # num_passes >= 1
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(out)
            out.copy_meta_from(inputs)
        return out


class UnrolledFeedbackInferer(Inferer):
    """Training-time unrolled refinement: train on the prediction made after ``num_passes - 1`` feedback passes.

    Used as the trainer's inferer. The input is FANet's one tensor ``(B, C + 1, *spatial)`` whose last channel is
    the start mask (the same start mask as at test time). Passes ``1 .. num_passes - 1`` run without gradient, each
    feeding its binarized (or probability) prediction to the next, exactly as :class:`IterativeRefinementInferer`
    does at test time; pass ``num_passes`` runs with gradient. ``num_passes=1`` is plain single-pass training.

    Args:
        num_passes: passes per training step, ``>= 1``.
        feedback: ``"binary"`` or ``"probability"``, as at test time.
        threshold: probability threshold of binary feedback.
        loss_on_every_pass: also keep the gradient of passes ``1 .. num_passes - 1`` and return every pass's logits
            stacked along the channel dimension ``(B, num_passes, *spatial)`` (pass ``k`` in channel ``k - 1``), for
            :class:`~fanet_monai.losses.PassAveragedLoss`. Otherwise returns the last pass ``(B, 1, *spatial)``.

    The fed masks themselves are never differentiated through (they are thresholded, or detached probabilities).
    """

    def __init__(
        self, num_passes: int = 2, feedback: str = "binary", threshold: float = 0.5, loss_on_every_pass: bool = False
    ) -> None:
        super().__init__()
        if isinstance(num_passes, bool) or int(num_passes) != num_passes or num_passes < 1:
            raise ValueError(f"num_passes must be an integer >= 1, got {num_passes!r}.")
        if feedback not in FEEDBACK_MODES:
            raise ValueError(f"feedback must be one of {list(FEEDBACK_MODES)}, got {feedback!r}.")
        self.num_passes = int(num_passes)
        self.feedback = feedback
        self.threshold = float(threshold)
        self.loss_on_every_pass = bool(loss_on_every_pass)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        image, mask = inputs[:, :-1], inputs[:, -1:]
        outputs = []
        for k in range(1, self.num_passes + 1):
            with_grad = torch.is_grad_enabled() and (k == self.num_passes or self.loss_on_every_pass)
            with torch.set_grad_enabled(with_grad):
                logits = network(torch.cat([image, mask], dim=1), *args, **kwargs)
            outputs.append(logits)
            prob = torch.sigmoid(logits.detach())
            mask = ((prob > self.threshold) if self.feedback == "binary" else prob).to(inputs.dtype)
        if self.loss_on_every_pass:
            return torch.cat(outputs, dim=1)
        return outputs[-1]
