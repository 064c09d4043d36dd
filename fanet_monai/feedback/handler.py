"""Ignite handlers that run FANet's feedback loop inside MONAI's ``SupervisedTrainer``.

One sample's mask travels in one direction: file name → cache (RLE, in the preprocessed frame) →
:class:`~fanet_monai.feedback.transforms.FeedbackMaskd` puts it in the data dict → random augmentation moves it with
the image → the trainer hands it to its inferer (``PrepareBatchExtraInput({"mask": "mask"})`` →
``inferer(image, network, mask=mask)``, which builds the network's input) → prediction → :class:`FeedbackMaskHandler`
binarizes it, maps it back to the preprocessed frame with the inverse of the augmentation → cache.

Binary and multi-class networks share this path: the cache holds one mask channel, the foreground of any class
(:func:`~fanet_monai.feedback.masks.foreground_mask`), because the network has one mask input
(:mod:`fanet_monai.feedback.masks` says why).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monai.data import MetaTensor
from monai.metrics import compute_dice
from monai.transforms import Compose
from monai.utils import min_version, optional_import

from fanet_monai.feedback.cache import FeedbackMaskCache, sample_key
from fanet_monai.feedback.inversion import CacheFrameInverse
from fanet_monai.feedback.masks import foreground_mask

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["FeedbackMaskHandler", "FeedbackCommitHandler"]


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
    - ``Events.ITERATION_COMPLETED``: each prediction is binarized (foreground of any class), mapped back to the
      preprocessed frame with the inverse of the augmentation that produced the sample, and stored under the
      sample's file name. Pixels that the augmented view did not cover (cropped or rotated out) keep their previous
      mask.
    - ``Events.EPOCH_COMPLETED``: ``engine.state.metrics[metric_name]`` = mean Dice of the fed masks vs labels, and
      ``engine.state.metrics["stored_mask_dice"]`` = mean Dice of the masks stored this epoch vs labels (both in the
      augmented frame, as the network saw them). The labels count as foreground where ``> 0.5``: binary 0/1 labels
      as before, and, for integer multi-class labels 0..K, any class (``label > 0``). With the paper's
      ``previous`` source, epoch ``e``'s fed masks are epoch ``e - 1``'s stored ones (the start mask at epoch 1);
      the ``initial`` and ``mixed`` sources feed the start mask to all or some samples
      (:mod:`fanet_monai.feedback.sources`), and unrolled training
      (:class:`~fanet_monai.inferers.UnrolledFeedbackInferer`) refines whatever mask it was fed.

    ``transform`` (the training dataset's transform, ``@train#transforms`` in ``train.json``) must contain one
    :class:`~fanet_monai.feedback.transforms.FeedbackMaskd`; the transforms before it must be deterministic (they
    define the cache frame), the ones after it are the augmentation that is inverted.

    Args:
        cache: the cache shared with ``FeedbackMaskd``.
        transform: the training dataset's ``Compose`` transform.
        image_key, label_key, mask_key, pred_key: keys of the batch and of the engine output.
        threshold: probability above which a predicted pixel is foreground (one output channel; K + 1 channels
            use ``argmax != 0``).
        metric_name: name of the per-epoch Dice of the fed masks.
        out_channels: the network's output channels per pass, 1 (binary) or K + 1 (K classes)
            (``network_def#out_channels``); stacked passes (``loss_on_every_pass``) are split by it.
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
        out_channels: int = 1,
    ) -> None:
        #: the transform split at its ``FeedbackMaskd`` and the inverse of the augmentation (checks ``transform``)
        self.inverse = CacheFrameInverse(transform, cache, mask_key, pred_key, threshold, out_channels)
        self.cache = cache
        self.image_key = image_key
        self.label_key = label_key
        self.mask_key = mask_key
        self.pred_key = pred_key
        self.threshold = threshold
        self.out_channels = self.inverse.out_channels
        self.metric_name = metric_name
        self.history: list[float] = []  # mean Dice of fed masks vs labels, one value per epoch
        self.stored_history: list[float] = []  # mean Dice of the stored (predicted) masks vs labels, per epoch
        self._dice_sum = self._stored_sum = 0.0
        self._dice_count = self._stored_count = 0
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.initialize)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset_epoch)
        engine.add_event_handler(Events.ITERATION_STARTED, self.feed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.store)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.report)

    def initialize(self, engine: Engine) -> None:
        """Give every training sample without a cached mask its initial (Otsu) mask."""
        if getattr(engine.data_loader, "persistent_workers", False):
            raise ValueError("persistent data-loader workers would feed stale feedback masks: "
                             "set persistent_workers=False.")
        items = getattr(engine.data_loader.dataset, "data", None)
        if items is None:
            raise ValueError("the training dataset has no `data` list to initialise the feedback masks from.")
        missing = 0
        for item in items:
            key = sample_key(item[self.image_key]) if isinstance(item[self.image_key], str) else None
            if key is not None and key in self.cache:
                continue
            sample = self.inverse.preprocess(item)
            image = sample[self.image_key]
            key = sample_key(image.meta if isinstance(image, MetaTensor) else item[self.image_key])
            if key in self.cache:
                continue
            self.cache.put(key, self.inverse.feedback_transform.initial_mask(image).cpu().numpy())
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
        """Binarize each prediction (foreground of any class), map it back to the cache frame and store it under the
        sample's file name."""
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, dict):  # decollate=False: split into per-sample items
            n = len(batch[self.mask_key])
            items = [{k: batch[k][i] for k in (self.mask_key, self.label_key) if k in batch} for i in range(n)]
            preds = [output[self.pred_key][i] for i in range(n)]
        else:
            items, preds = batch, [item[self.pred_key] for item in output]
        for item, pred in zip(items, preds):
            self.cache.put(*self.inverse.to_cache_frame(item[self.mask_key], pred))
            label = item.get(self.label_key)
            if label is not None:
                last = pred.detach()[-self.out_channels :].float()  # the last pass when several are stacked
                binary = foreground_mask(last[None], self.threshold)[0].float().cpu()
                self._stored_sum += float(_dice(binary[None], (label[None].cpu() > 0.5).float()).sum())
                self._stored_count += 1

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
