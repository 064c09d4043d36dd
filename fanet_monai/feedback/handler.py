"""Ignite handlers that run FANet's feedback loop inside MONAI's ``SupervisedTrainer``.

One sample's mask travels in one direction: file name → cache (RLE, in the preprocessed frame) →
:class:`~fanet_monai.feedback.transforms.FeedbackMaskd` puts it in the data dict → random augmentation moves it with
the image → the trainer hands it to its inferer (``PrepareBatchExtraInput({"mask": "mask"})`` →
``inferer(image, network, mask=mask)``, which builds the network's input) → prediction → :class:`FeedbackMaskHandler`
binarizes it, maps it back to the preprocessed frame with the inverse of the augmentation → cache.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monai.data import MetaTensor
from monai.metrics import compute_dice
from monai.transforms import Compose, Invertd
from monai.utils import min_version, optional_import

from fanet_monai.feedback.cache import FeedbackMaskCache, sample_key
from fanet_monai.feedback.transforms import FeedbackMaskd

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["FeedbackMaskHandler", "FeedbackCommitHandler"]


_GRID_PADDING = {"zeros", "border", "reflection"}


def _zero_padding(operations: Any) -> Any:
    """Copy of a transform trace with every padding mode set to zero padding.

    Inverting an augmentation with zero padding makes pixels that the augmented view did not show (rotated, zoomed
    or cropped out) come back as 0 in the coverage channel, instead of border or reflected values.
    """
    if isinstance(operations, list):
        return [_zero_padding(op) for op in operations]
    if isinstance(operations, dict):
        converted = {}
        for key, value in operations.items():
            if key == "padding_mode" and value is not None:
                converted[key] = "zeros" if str(value) in _GRID_PADDING else "constant"
            else:
                converted[key] = _zero_padding(value)
        return converted
    return operations


def _dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice ``(B,)`` of binary ``(B, 1, *spatial)`` tensors (MONAI's); two empty masks agree (1.0)."""
    return compute_dice(a.float(), b.float(), include_background=True, ignore_empty=False)[:, 0]


class FeedbackMaskHandler:
    """Feed each sample its cached mask and store its new prediction (paper Sec. III-C), attached to a trainer.

    - ``Events.EPOCH_STARTED``: every training sample without a cached mask gets the paper's initial mask (Otsu of
      the preprocessed image), so the cache is complete before the epoch's data-loader workers start (also after a
      resume, when the checkpoint has restored the cache first).
    - ``Events.ITERATION_STARTED``: the Dice of the fed masks against the labels is accumulated (what the feedback
      did); the masks themselves reach the network through the trainer's inferer.
    - ``Events.ITERATION_COMPLETED``: each prediction is binarized, mapped back to the preprocessed frame with the
      inverse of the augmentation that produced the sample, and stored under the sample's file name. Pixels that the
      augmented view did not cover (cropped or rotated out) keep their previous mask.
    - ``Events.EPOCH_COMPLETED``: ``engine.state.metrics[metric_name]`` = mean Dice of the fed masks vs labels, and
      ``engine.state.metrics["stored_mask_dice"]`` = mean Dice of the masks stored this epoch vs labels (both in the
      augmented frame, as the network saw them). With the paper's ``previous`` source, epoch ``e``'s fed masks are
      epoch ``e - 1``'s stored ones (the start mask at epoch 1); the ``initial`` and ``mixed`` sources feed the start
      mask to all or some samples (:mod:`fanet_monai.feedback.sources`), and unrolled training
      (:class:`~fanet_monai.inferers.UnrolledFeedbackInferer`) refines whatever mask it was fed.

    ``transform`` (the training dataset's transform, ``@train#transforms`` in ``train.json``) must contain one
    :class:`~fanet_monai.feedback.transforms.FeedbackMaskd`; the transforms before it must be deterministic (they
    define the cache frame), the ones after it are the augmentation that is inverted.

    Args:
        cache: the cache shared with ``FeedbackMaskd``.
        transform: the training dataset's ``Compose`` transform.
        image_key, label_key, mask_key, pred_key: keys of the batch and of the engine output.
        threshold: probability above which a predicted pixel is foreground.
        metric_name: name of the per-epoch Dice of the fed masks.
    """

    def __init__(
        self,
        cache: FeedbackMaskCache,
        transform: Compose,
        image_key: str = "image",
        label_key: str = "label",
        mask_key: str = "mask",
        pred_key: str = "pred",
        threshold: float = 0.5,
        metric_name: str = "feedback_mask_dice",
    ) -> None:
        if not isinstance(transform, Compose):
            raise ValueError(
                f"FeedbackMaskHandler needs the training dataset's Compose transform, got {type(transform).__name__}."
            )
        self.cache = cache
        self.image_key = image_key
        self.label_key = label_key
        self.mask_key = mask_key
        self.pred_key = pred_key
        self.threshold = threshold
        self.transform = transform
        self.metric_name = metric_name
        self.history: list[float] = []  # mean Dice of fed masks vs labels, one value per epoch
        self.stored_history: list[float] = []  # mean Dice of the stored (predicted) masks vs labels, per epoch
        self._dice_sum = self._stored_sum = 0.0
        self._dice_count = self._stored_count = 0
        self._invert: Invertd | None = None
        self._preprocess_end = 0
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.initialize)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset_epoch)
        engine.add_event_handler(Events.ITERATION_STARTED, self.feed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.store)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.report)

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _split_transform(self) -> Compose:
        transform = self.transform
        flat = transform.flatten().transforms
        positions = [i for i, t in enumerate(flat) if isinstance(t, FeedbackMaskd) and t.cache is self.cache]
        if len(positions) != 1:
            raise ValueError(
                "the training transform must contain exactly one FeedbackMaskd that uses this handler's cache, "
                f"found {len(positions)}."
            )
        self._preprocess_end = positions[0]
        preprocessing = flat[: positions[0]]
        random_first = [type(t).__name__ for t in preprocessing if hasattr(t, "randomize")]
        if random_first:
            raise ValueError(f"random transforms before FeedbackMaskd would misalign the cached masks: {random_first}.")
        self._flat = flat
        self._transform = transform
        # inverting a sample's augmentation maps its prediction back into the cache frame (bilinear, then threshold)
        augmentation = Compose(flat[positions[0] + 1 :])
        self._invert = Invertd(self.pred_key, augmentation, orig_keys=self.mask_key, nearest_interp=False)
        return transform

    def initialize(self, engine: Engine) -> None:
        """Give every training sample without a cached mask its initial (Otsu) mask."""
        if getattr(engine.data_loader, "persistent_workers", False):
            raise ValueError("persistent data-loader workers would feed stale feedback masks: set persistent_workers=False.")
        transform = self._split_transform() if self._invert is None else self._transform
        feedback_transform = self._flat[self._preprocess_end]
        items = getattr(engine.data_loader.dataset, "data", None)
        if items is None:
            raise ValueError("the training dataset has no `data` list to initialise the feedback masks from.")
        missing = 0
        for item in items:
            key = sample_key(item[self.image_key]) if isinstance(item[self.image_key], str) else None
            if key is not None and key in self.cache:
                continue
            sample = transform(dict(item), end=self._preprocess_end)
            image = sample[self.image_key]
            key = sample_key(image.meta if isinstance(image, MetaTensor) else item[self.image_key])
            if key in self.cache:
                continue
            self.cache.put(key, feedback_transform.initial_mask(image).cpu().numpy())
            missing += 1
        if missing:
            self.cache.commit()  # the initial masks are the epoch-0 state under every update policy
        self.logger.info(f"feedback cache: {len(self.cache)} masks ({missing} given the start mask).")

    # -- per iteration --------------------------------------------------------------------------------------------
    def _reset_epoch(self, engine: Engine) -> None:
        self._dice_sum = self._stored_sum = 0.0
        self._dice_count = self._stored_count = 0

    def feed(self, engine: Engine) -> None:
        """Check that the fed masks are aligned with the images; accumulate their Dice against the labels."""
        batch = engine.state.batch
        image, mask = batch[self.image_key], batch[self.mask_key]
        if image.shape[2:] != mask.shape[2:]:
            raise ValueError(f"image {tuple(image.shape)} and feedback mask {tuple(mask.shape)} are not aligned.")
        label = batch.get(self.label_key)
        if label is not None:
            dice = _dice((mask > 0.5).float(), (label > 0.5).float())
            self._dice_sum += float(dice.sum())
            self._dice_count += len(dice)

    def store(self, engine: Engine) -> None:
        """Binarize each prediction, map it back to the cache frame and store it under the sample's file name."""
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, dict):  # decollate=False: split into per-sample items
            n = len(batch[self.mask_key])
            items = [{k: batch[k][i] for k in (self.mask_key, self.label_key) if k in batch} for i in range(n)]
            preds = [output[self.pred_key][i] for i in range(n)]
        else:
            items, preds = batch, [item[self.pred_key] for item in output]
        for item, pred in zip(items, preds):
            self.cache.put(*self.to_cache_frame(item[self.mask_key], pred))
            label = item.get(self.label_key)
            if label is not None:
                binary = (torch.sigmoid(pred.detach()[-1:].float()) > self.threshold).float().cpu()
                self._stored_sum += float(_dice(binary[None], (label[None].cpu() > 0.5).float()).sum())
                self._stored_count += 1

    def to_cache_frame(self, mask: MetaTensor, pred: torch.Tensor) -> tuple:
        """Map one prediction ``(1, *spatial)`` (logits, augmented frame) into the cache frame.

        Returns ``(key, binary mask (1, *cache_spatial) uint8)``.
        """
        key = sample_key(mask.meta)
        prob = torch.sigmoid(pred.detach().float().cpu()[-1:])  # the last pass when several are stacked
        coverage = torch.ones_like(prob)
        stacked = MetaTensor(torch.cat([prob, coverage]), meta=dict(mask.meta))
        trace = MetaTensor(mask.detach().cpu(), meta=dict(mask.meta))
        trace.applied_operations = _zero_padding(mask.applied_operations)
        inverted = self._invert({self.pred_key: stacked, self.mask_key: trace})[self.pred_key]
        new = inverted[:1] > self.threshold
        covered = inverted[1:] > 0.5
        if not bool(covered.all()):
            previous = self.cache.get(key)
            if previous is not None:
                new = torch.where(covered, new, torch.as_tensor(previous, dtype=torch.bool))
        return key, new.to(torch.uint8).numpy()

    def report(self, engine: Engine) -> None:
        value = self._dice_sum / max(self._dice_count, 1)
        stored = self._stored_sum / max(self._stored_count, 1)
        self.history.append(value)
        self.stored_history.append(stored)
        engine.state.metrics[self.metric_name] = value
        engine.state.metrics["stored_mask_dice"] = stored
        self.logger.info(
            f"epoch {engine.state.epoch}: mean Dice vs labels of the fed feedback masks = {value:.4f}, of the "
            f"stored predictions = {stored:.4f} "
            f"(cache {len(self.cache)} masks, {self.cache.nbytes} bytes RLE vs {self.cache.raw_nbytes} raw)"
        )


class FeedbackCommitHandler:
    """Commit staged feedback masks when validation improves, discard them otherwise (the reference code's rule).

    Attach to the *evaluator*; only meaningful with the cache's ``"on_improvement"`` update policy (with
    ``"every_epoch"`` it does nothing).

    Args:
        cache: the feedback mask cache.
        metric_name: validation metric in ``engine.state.metrics`` (e.g. ``"val_loss"``).
        mode: ``"min"`` (a loss) or ``"max"`` (a score).
    """

    def __init__(self, cache: FeedbackMaskCache, metric_name: str = "val_loss", mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
        self.cache = cache
        self.metric_name = metric_name
        self.mode = mode
        self.best: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.cache.update_policy != "on_improvement":
            return
        value = float(engine.state.metrics[self.metric_name])
        improved = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if improved:
            self.best = value
            self.cache.commit()
        else:
            self.cache.discard()

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
