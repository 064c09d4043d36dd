"""Pass-wise evaluation of FANet's test-time refinement (paper Table IX, Figs. 1, 3 and 5).

One code path: a MONAI :class:`~monai.engines.SupervisedEvaluator` runs a :class:`PassWiseInferer`, which returns
the logits of every pass stacked along the channel dimension, pass-major: ``(B, num_passes * C, *spatial)`` with
``C = 1`` (binary) or ``K + 1`` (K classes) (the evaluator's post-processing keeps the last pass's ``C`` channels as
``pred`` for MONAI's key metric), and a :class:`PassWiseEvaluationHandler`
attached to the evaluator scores every pass with the paper's per-image metrics, derives the early-stop result from
the same passes with the inferer's own rule (:func:`~fanet_monai.inferers.early_stop_passes`), and writes
``metrics_per_pass.csv``, ``metrics_per_pass.png`` and ``qualitative.png``. ``bundle/configs/evaluate.json``
wires these objects. Multi-class predictions are scored with the paper's metrics on the foreground of any class
and with the Dice of each class (:class:`~fanet_monai.metrics.PassWiseMetrics` with ``num_classes=K``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.engines import IterationEvents
from monai.inferers import Inferer
from monai.metrics import Cumulative
from monai.utils import CommonKeys, convert_to_tensor, min_version, optional_import

from fanet_monai.distributed import get_rank
from fanet_monai.evaluation.plots import has_matplotlib, plot_metrics_per_pass, plot_qualitative
from fanet_monai.evaluation.reports import markdown_metrics, rate, write_metrics_csv
from fanet_monai.feedback.masks import check_out_channels, discrete_prediction
from fanet_monai.inferers import IterativeRefinementInferer, early_stop_passes
from fanet_monai.metrics import PAPER_METRICS, PassWiseMetrics

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["PassWiseEvaluationHandler", "PassWiseInferer"]


class PassWiseInferer(IterativeRefinementInferer):
    """Iterative refinement for evaluation: returns every pass, so that each pass can be scored.

    Always runs all ``num_passes`` passes on every image (no early stop); the early-stop result is derived from the
    same passes by :func:`~fanet_monai.inferers.early_stop_passes` with :attr:`tolerance`. Keeps no per-call state.

    Args:
        num_passes: number of network evaluations (``>= 1``).
        start_mask: first-pass mask, see :class:`~fanet_monai.inferers.IterativeRefinementInferer`.
        feedback: ``"binary"`` or ``"probability"``.
        threshold: probability threshold of the binarized predictions (feedback, early stop and metrics) of one
            output channel; K + 1 channels use the argmax.
        tolerance: early-stop tolerance used to derive the early-stop result.
        inner: optional inner MONAI inferer run at every pass.
        amp: run each pass under ``torch.autocast``.
        reviewed_channel: the network has a reviewed channel (zeros are fed: evaluation has no annotator).
    """

    def __init__(
        self,
        num_passes: int = 10,
        start_mask: str | Callable[[torch.Tensor], torch.Tensor] = "otsu",
        feedback: str = "binary",
        threshold: float = 0.5,
        tolerance: float = 0.0,
        inner: Inferer | None = None,
        amp: bool = False,
        reviewed_channel: bool = False,
    ) -> None:
        super().__init__(
            num_passes=num_passes,
            start_mask=start_mask,
            feedback=feedback,
            threshold=threshold,
            early_stop=False,
            tolerance=tolerance,
            inner=inner,
            return_all_passes=True,
            amp=amp,
            reviewed_channel=reviewed_channel,
        )

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Refine ``inputs`` for ``num_passes`` passes (arguments of
        :meth:`~fanet_monai.inferers.IterativeRefinementInferer.__call__`).

        Returns:
            float32 logits ``(B, num_passes * C, *spatial)``, pass-major: pass ``k`` in channels
            ``(k - 1) * C .. k * C - 1`` (binary, ``C = 1``: pass ``k`` in channel ``k - 1``).
        """
        passes = super().__call__(inputs, network, *args, mask=mask, **kwargs)  # (P, B, C, *spatial)
        return passes.movedim(0, 1).flatten(1, 2)


def voxel_sizes(label: torch.Tensor) -> list[list[float]] | None:
    """The voxel size of every image of a batch ``(B, 1, *spatial)`` from its affine (MONAI's
    :func:`~monai.data.utils.affine_to_spacing`); ``None`` for a plain tensor (distances in voxels)."""
    affine = getattr(label, "affine", None)
    if not isinstance(label, MetaTensor) or affine is None:
        return None
    spatial_dims = label.ndim - 2
    affines = affine if affine.ndim == 3 else affine[None].expand(label.shape[0], -1, -1)
    return [affine_to_spacing(a, r=spatial_dims).tolist() for a in affines]


class PassWiseEvaluationHandler:
    """Ignite handler scoring every refinement pass of a :class:`PassWiseInferer` with the paper's metrics.

    Attach it to a :class:`~monai.engines.SupervisedEvaluator` whose ``inferer`` is a :class:`PassWiseInferer`
    (the evaluator's post-processing keeps the last pass as ``pred`` for MONAI's key metric). After every forward
    pass (``IterationEvents.FORWARD_COMPLETED``, before decollation and post-processing) it reads the logits of all
    passes ``(B, num_passes * C, *spatial)`` from the engine's ``pred`` and the batch's labels ``(B, 1, *spatial)``,
    turns every pass into its discrete prediction (:func:`~fanet_monai.feedback.masks.discrete_prediction`: a
    binary mask, or the argmax label map 0..K for ``C = K + 1``), and accumulates, per image:

    - the metrics of each pass ``1 .. num_passes`` (:class:`~fanet_monai.metrics.PassWiseMetrics`; K classes: the
      metrics on the foreground of any class, then ``dice_class_1 .. dice_class_K`` and ``dice_class_mean``);
    - the early-stop result: the prediction of the pass given by :func:`~fanet_monai.inferers.early_stop_passes`
      (what the inferer with ``early_stop=True`` and the same tolerance returns) and the number of passes it used;
    - the inference time (from the start of the iteration to the end of the forward pass, CUDA synchronised);
    - for the first ``num_qualitative`` images: image, ground truth, start mask and some passes (the foreground of
      any class for K classes).

    At the end of the epoch the means are in :attr:`rows` (one dict per pass, then one with ``pass="early_stop"``),
    ``engine.state.metrics`` gets ``early_stop_<column>`` and ``early_stop_mean_passes``, and, if ``output_dir``
    is set, ``metrics_per_pass.csv``, ``metrics_per_pass.png`` and ``qualitative.png`` are written there (rank 0).

    CSV columns: ``pass`` (1-based, or ``early_stop``), the metrics (default: the 7 of
    :data:`~fanet_monai.metrics.PAPER_METRICS`; K classes: then the per-class Dice columns), ``n_images``,
    ``mean_passes``, ``seconds`` (inference time summed over batches; pass ``k`` of ``P`` is given ``k / P`` of it,
    every pass running the same network on the whole batch; empty for the early-stop row, which is not timed) and
    ``images_per_s`` (``n_images / seconds``).

    Args:
        output_dir: folder of the CSV and figures; ``None`` writes nothing.
        num_qualitative: number of images in ``qualitative.png`` (0 = no figure).
        qualitative_passes: passes shown in ``qualitative.png`` (those ``<= num_passes``; the last pass is added).
        metrics: names from :data:`~fanet_monai.metrics.ALL_METRICS` (default the paper's seven). The boundary
            metrics (``hd95``, ``surface_dice``) are computed in the units of each label's voxel size (its affine:
            millimetres for volumes, pixels for bitmaps).
        surface_tolerance: the surface Dice's tolerance in the same units.
        plots: write the PNG figures (needs matplotlib; skipped with a warning if it is missing).
        name: logger name.
        num_classes: 1 (binary) or the number K of classes; ``None`` (default): from the predictions' channel count
            (``C / num_passes``, minus the background channel when above 1). When given, a prediction with another
            channel count is refused.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        num_qualitative: int = 4,
        qualitative_passes: Sequence[int] = (1, 2, 3, 5, 10),
        metrics: Sequence[str] = PAPER_METRICS,
        plots: bool = True,
        name: str = "PassWiseEvaluationHandler",
        num_classes: int | None = None,
        surface_tolerance: float = 1.0,
    ) -> None:
        if num_qualitative < 0:
            raise ValueError(f"num_qualitative must be >= 0, got {num_qualitative}.")
        if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
            raise ValueError(f"num_classes must be an integer >= 1 (1 = binary) or None, got {num_classes!r}.")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.num_qualitative = int(num_qualitative)
        self.qualitative_passes = tuple(int(k) for k in qualitative_passes)
        self.metrics = tuple(metrics)
        self.surface_tolerance = float(surface_tolerance)
        self.plots = plots
        self.logger = logging.getLogger(name)
        #: result of the last epoch: one dict per pass, then the early-stop row (see the class docstring).
        self.rows: list[dict[str, Any]] = []
        #: total wall time (s) of the last epoch, data loading included.
        self.wall_seconds: float = float("nan")
        self.reset()

    def attach(self, engine: Engine) -> None:
        """Register the handler's callbacks on ``engine`` (a :class:`~monai.engines.SupervisedEvaluator`)."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_STARTED, self.iteration_started)
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Engine | None = None) -> None:
        """Clear the accumulated values (at the start of every evaluation epoch)."""
        self._metrics_for(self.num_classes or 1)
        self._used = Cumulative()
        self._seconds = 0.0  # inference time of all passes, summed over the batches
        self._num_passes = 0
        self._iteration_start = time.perf_counter()
        self._examples: list[dict[str, Any]] = []
        self._start = time.perf_counter()

    def _metrics_for(self, num_classes: int) -> None:
        """New (empty) per-pass and early-stop accumulators for a ``num_classes``-class task."""
        self._passes = PassWiseMetrics(self.metrics, num_classes, self.surface_tolerance)
        self._early = PassWiseMetrics(self.metrics, num_classes, self.surface_tolerance)

    def _predictions(self, passes: torch.Tensor, inferer: PassWiseInferer) -> torch.Tensor:
        """Discrete predictions ``(P, B, 1, *spatial)`` of the stacked logits ``(B, P * C, *spatial)``; sets the
        number of classes at the first batch."""
        num_passes = inferer.num_passes
        if passes.shape[1] % num_passes:
            raise ValueError(f"{passes.shape[1]} prediction channels are not {num_passes} passes of equal width.")
        channels = check_out_channels(passes.shape[1] // num_passes)
        num_classes = max(channels - 1, 1)
        if self.num_classes is not None and num_classes != self.num_classes:
            raise ValueError(
                f"num_classes={self.num_classes} but the network gives {channels} channels per pass "
                f"({num_classes} class{'es' if num_classes > 1 else ''})."
            )
        if self._passes.num_classes != num_classes:
            if self._num_passes:  # a batch was scored already (no collective call here: this runs per rank)
                raise ValueError("the number of output channels changed within an evaluation epoch.")
            self._metrics_for(num_classes)
        logits = passes.unflatten(1, (num_passes, channels)).movedim(1, 0)  # (P, B, C, *spatial)
        return torch.stack([discrete_prediction(logits[k], inferer.threshold) for k in range(num_passes)])

    def iteration_started(self, engine: Engine | None = None) -> None:
        """Start the clock of the batch's inference (called at ``Events.ITERATION_STARTED``)."""
        self._iteration_start = time.perf_counter()

    def iteration_completed(self, engine: Engine) -> None:
        """Score the passes of the current batch (called at ``IterationEvents.FORWARD_COMPLETED``)."""
        inferer = engine.inferer
        if not isinstance(inferer, PassWiseInferer):
            raise TypeError(
                f"{type(self).__name__} needs the evaluator's inferer to be a PassWiseInferer, got "
                f"{type(inferer).__name__}."
            )
        output = engine.state.output
        label = output.get(CommonKeys.LABEL) if isinstance(output, Mapping) else None
        if not isinstance(label, torch.Tensor):
            raise ValueError(f"{type(self).__name__} needs labels: the batch has no '{CommonKeys.LABEL}' tensor.")
        passes = convert_to_tensor(output[CommonKeys.PRED], track_meta=False)  # (B, P * C, *spatial) logits
        if passes.device.type == "cuda":
            torch.cuda.synchronize(passes.device)
        self._seconds += time.perf_counter() - self._iteration_start
        binary = self._predictions(passes, inferer)  # (P, B, 1, *spatial): 0/1 masks, or label maps 0..K
        spacing = voxel_sizes(label)
        label = convert_to_tensor(label, track_meta=False)
        self._num_passes = binary.shape[0]
        for k in range(binary.shape[0]):
            self._passes.update(k, binary[k], label, spacing)
        used = early_stop_passes(binary, inferer.tolerance)  # (B,)
        final = binary[used - 1, torch.arange(binary.shape[1], device=binary.device)]  # (B, 1, *spatial)
        self._early.update(0, final, label, spacing)
        self._used.extend(used.cpu())
        if len(self._examples) < self.num_qualitative:
            self._collect_examples(inferer, output[CommonKeys.IMAGE], label, binary)

    def _collect_examples(
        self, inferer: PassWiseInferer, image: torch.Tensor, label: torch.Tensor, binary: torch.Tensor
    ) -> None:
        """Keep image ``(C, *spatial)``, label, start mask and all pass masks (foreground of any class) of the
        batch's first images (CPU)."""
        image = convert_to_tensor(image, track_meta=False)
        start = inferer.make_start_mask(image.float())
        for b in range(min(image.shape[0], self.num_qualitative - len(self._examples))):
            self._examples.append(
                {
                    "image": image[b].detach().float().cpu(),
                    "label": label[b, 0].detach().cpu() > 0.5,
                    "start": start[b, 0].detach().cpu() > 0.5,
                    "passes": binary[:, b, 0].detach().cpu() > 0,  # (P, *spatial)
                }
            )

    def epoch_completed(self, engine: Engine) -> None:
        """Average per pass, add the early-stop row, publish the results and write the files."""
        self.wall_seconds = time.perf_counter() - self._start
        table = self._passes.aggregate()
        columns = self._passes.columns  # the metrics, then (K classes) the per-class Dice
        if not table:
            self.logger.warning("no image was evaluated; nothing to report.")
            self.rows = []
            return
        used = self._used.get_buffer()
        mean_used = float(used.float().mean()) if isinstance(used, torch.Tensor) and used.numel() else float("nan")
        rows: list[dict[str, Any]] = []
        for k, entry in enumerate(table):
            seconds = self._seconds * (k + 1) / self._num_passes
            row = {"pass": k + 1, **{m: entry[m] for m in columns}, "n_images": entry["n_images"]}
            row.update(mean_passes=float(k + 1), seconds=seconds, images_per_s=rate(entry["n_images"], seconds))
            rows.append(row)
        early = self._early.aggregate()[0]
        rows.append(
            {
                "pass": "early_stop",
                **{m: early[m] for m in columns},
                "n_images": early["n_images"],
                "mean_passes": mean_used,
                "seconds": float("nan"),
                "images_per_s": float("nan"),
            }
        )
        self.rows = rows
        engine.state.metrics.update({f"early_stop_{m}": early[m] for m in columns})
        engine.state.metrics["early_stop_mean_passes"] = mean_used
        last = rows[-2]
        self.logger.info(
            f"{last['n_images']} images, {len(table)} passes: {last['seconds']:.2f} s inference time "
            f"({last['images_per_s']:.2f} images/s), {self.wall_seconds:.2f} s in all.\n"
            f"{markdown_metrics(rows, columns)}"
        )
        if self.output_dir is None or get_rank() != 0:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_metrics_csv(rows, self.output_dir / "metrics_per_pass.csv", columns)
        if not self.plots:
            return
        if not has_matplotlib:
            self.logger.warning("matplotlib is not installed: metrics_per_pass.png and qualitative.png are skipped.")
            return
        plot_metrics_per_pass(rows, self.output_dir / "metrics_per_pass.png", columns)
        if self._examples:
            num_passes = len(table)
            shown = sorted({k for k in self.qualitative_passes if 1 <= k <= num_passes} | {num_passes})
            plot_qualitative(self._examples, shown, self.output_dir / "qualitative.png")
