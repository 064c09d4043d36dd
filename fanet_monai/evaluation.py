"""Pass-wise evaluation of FANet's test-time refinement (paper Table IX, Figs. 1, 3 and 5) and the ablation table.

One code path: a MONAI :class:`~monai.engines.SupervisedEvaluator` runs a :class:`PassWiseInferer` (an
:class:`~fanet_monai.inferers.IterativeRefinementInferer` that returns the last pass as ``pred``, so MONAI's
post-processing and key metrics work unchanged, and keeps the logits of every pass), and a
:class:`PassWiseEvaluationHandler` attached to the evaluator scores every pass with the paper's per-image metrics,
derives the early-stop result from the same passes, and writes ``metrics_per_pass.csv``, ``metrics_per_pass.png``
and ``qualitative.png``. ``bundle/configs/evaluate.json`` wires these objects; :func:`ablation_table` runs that
bundle once per checkpoint.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.data import MetaTensor
from monai.engines import IterationEvents
from monai.inferers import Inferer
from monai.metrics import Cumulative
from monai.utils import CommonKeys, min_version, optional_import

from fanet_monai.inferers import IterativeRefinementInferer
from fanet_monai.metrics import PAPER_METRICS, PassWiseMetrics

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
idist, _ = optional_import("ignite", "0.4.11", min_version, "distributed")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = [
    "ABLATION_VARIANTS",
    "METRIC_LABELS",
    "TABLE_IX_COLUMNS",
    "PassWiseEvaluationHandler",
    "PassWiseInferer",
    "ablation_table",
    "early_stop_passes",
    "markdown_metrics",
    "markdown_table",
    "plot_metrics_per_pass",
    "plot_qualitative",
    "write_metrics_csv",
]

#: Display names of :data:`~fanet_monai.metrics.PAPER_METRICS` (paper Table IX headers).
METRIC_LABELS: dict[str, str] = {
    "jaccard": "mIoU",
    "f1": "F1",
    "recall": "Rec",
    "precision": "Prec",
    "specificity": "Spec",
    "accuracy": "Acc",
    "f2": "F2",
}

#: Columns of the ablation table (paper Table IX).
TABLE_IX_COLUMNS: tuple[str, ...] = ("Method", *METRIC_LABELS.values(), "Param", "GMac", "FPS")

#: Paper Table IX rows: name -> (FANet ``variant`` of the network, whether it is refined for ``num_passes`` passes).
#: B2 is B4's network (and weights) evaluated with one pass.
ABLATION_VARIANTS: dict[str, tuple[str, bool]] = {
    "B1": ("B1", False),
    "B2": ("B4", False),
    "B3": ("B3", True),
    "B4": ("B4", True),
}


def early_stop_passes(binary: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Per image, the pass at which :class:`~fanet_monai.inferers.IterativeRefinementInferer` with
    ``early_stop=True`` would stop, computed from the binarized masks of a run *without* early stop.

    The rule is the inferer's: the first pass ``k >= 2`` whose mask differs from that of pass ``k - 1`` on at most a
    fraction ``tolerance`` of the pixels; ``num_passes`` if there is none. Taking pass ``k``'s prediction for each
    image then gives the early-stop result (the inferer keeps the logits of the pass at which it stops).

    Args:
        binary: ``(num_passes, B, 1, *spatial)`` boolean masks of passes 1 .. ``num_passes``.
        tolerance: largest fraction of changed pixels that counts as "stopped changing", in ``[0, 1]``.

    Returns:
        ``(B,)`` long tensor of passes used, in ``1 .. num_passes``, on ``binary``'s device.
    """
    if binary.ndim < 4:
        raise ValueError(f"expected (num_passes, B, 1, *spatial) masks, got shape {tuple(binary.shape)}.")
    num_passes, batch = binary.shape[:2]
    used = torch.full((batch,), num_passes, dtype=torch.long, device=binary.device)
    if num_passes < 2:
        return used
    # fraction of changed pixels between consecutive passes, as the inferer computes it: (num_passes - 1, B)
    changed = (binary[1:] != binary[:-1]).flatten(2).sum(dim=2).double() / binary[0, 0].numel()
    stopped = changed <= tolerance
    first = stopped.int().argmax(dim=0) + 2  # first stopping pass, 1-based (pass index k + 2 for row k)
    return torch.where(stopped.any(dim=0), first, used)


class PassWiseInferer(IterativeRefinementInferer):
    """Iterative refinement for evaluation: returns the last pass like the base inferer and keeps every pass.

    Always runs all ``num_passes`` passes on every image (no early stop), so that each pass can be scored; the
    early-stop result is derived from the same passes by :func:`early_stop_passes` with :attr:`tolerance`. After a
    call, :attr:`last_passes` holds the logits of every pass and :attr:`last_pass_seconds` the time taken to reach
    each pass (CUDA is synchronised before reading the clock), for :class:`PassWiseEvaluationHandler`.

    Args:
        num_passes: number of network evaluations (``>= 1``).
        start_mask: first-pass mask, see :class:`~fanet_monai.inferers.IterativeRefinementInferer`.
        feedback: ``"binary"`` or ``"probability"``.
        threshold: probability threshold of the binarized predictions (feedback, early stop and metrics).
        tolerance: early-stop tolerance used to derive the early-stop result.
        inner: optional inner MONAI inferer run at every pass.
        amp: run each pass under ``torch.autocast``.
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
    ) -> None:
        super().__init__(
            num_passes=num_passes,
            start_mask=start_mask,
            feedback=feedback,
            threshold=threshold,
            early_stop=False,
            tolerance=tolerance,
            inner=inner,
            return_all_passes=False,
            amp=amp,
        )
        #: ``(num_passes, B, 1, *spatial)`` float32 logits of every pass of the last call (``None`` before).
        self.last_passes: torch.Tensor | None = None
        #: seconds from the start of the last call until pass 1, 2, ... was computed.
        self.last_pass_seconds: list[float] = []

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Refine ``inputs`` for ``num_passes`` passes.

        Args:
            inputs: ``(B, C, *spatial)`` images.
            network: callable ``(b, C + 1, *spatial) -> (b, 1, *spatial)`` logits.
            args: extra positional arguments for ``network`` (or ``inner``).
            kwargs: extra keyword arguments for ``network`` (or ``inner``).

        Returns:
            float32 logits ``(B, 1, *spatial)`` of the last pass, a MetaTensor with ``inputs``' metadata when
            ``inputs`` is one; every pass is in :attr:`last_passes`.
        """
        synchronize = inputs.device.type == "cuda"
        passes: list[torch.Tensor] = []
        seconds: list[float] = []
        start = time.perf_counter()
        for logits in self.iterate(inputs, network, *args, **kwargs):
            if synchronize:
                torch.cuda.synchronize(inputs.device)
            seconds.append(time.perf_counter() - start)
            passes.append(logits)
        self.last_passes = torch.stack(passes, dim=0)
        self.last_pass_seconds = seconds
        out = passes[-1]
        if isinstance(inputs, MetaTensor):  # keep the input's metadata, as the base inferer does
            out = MetaTensor(out)
            out.copy_meta_from(inputs)
        return out


class PassWiseEvaluationHandler:
    """Ignite handler scoring every refinement pass of a :class:`PassWiseInferer` with the paper's metrics.

    Attach it to a :class:`~monai.engines.SupervisedEvaluator` whose ``inferer`` is a :class:`PassWiseInferer`
    (the evaluator's ``pred`` is then the last pass, for MONAI's key metric). After every forward pass
    (``IterationEvents.FORWARD_COMPLETED``, before decollation) it reads the logits of all passes from the
    inferer and the batch's labels ``(B, 1, *spatial)``, and accumulates, per image:

    - the metrics of each pass ``1 .. num_passes`` (:class:`~fanet_monai.metrics.PassWiseMetrics`);
    - the early-stop result: the prediction of the pass given by :func:`early_stop_passes` (what the inferer with
      ``early_stop=True`` and the same tolerance returns) and the number of passes it used;
    - the cumulative inference time of each pass;
    - for the first ``num_qualitative`` images: image, ground truth, start mask and some passes.

    At the end of the epoch the means are in :attr:`rows` (one dict per pass, then one with ``pass="early_stop"``),
    ``engine.state.metrics`` gets ``early_stop_<metric>`` and ``early_stop_mean_passes``, and, if ``output_dir``
    is set, ``metrics_per_pass.csv``, ``metrics_per_pass.png`` and ``qualitative.png`` are written there (rank 0).

    CSV columns: ``pass`` (1-based, or ``early_stop``), the 7 metrics of :data:`~fanet_monai.metrics.PAPER_METRICS`,
    ``n_images``, ``mean_passes``, ``seconds`` (network time, summed over batches, until that pass was done for
    every image; empty for the early-stop row, which is not timed) and ``images_per_s`` (``n_images / seconds``).

    Args:
        output_dir: folder of the CSV and figures; ``None`` writes nothing.
        num_qualitative: number of images in ``qualitative.png`` (0 = no figure).
        qualitative_passes: passes shown in ``qualitative.png`` (those ``<= num_passes``; the last pass is added).
        metrics: names from :data:`~fanet_monai.metrics.PAPER_METRICS`.
        plots: write the PNG figures (needs matplotlib; skipped with a warning if it is missing).
        name: logger name.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        num_qualitative: int = 4,
        qualitative_passes: Sequence[int] = (1, 2, 3, 5, 10),
        metrics: Sequence[str] = PAPER_METRICS,
        plots: bool = True,
        name: str = "PassWiseEvaluationHandler",
    ) -> None:
        if num_qualitative < 0:
            raise ValueError(f"num_qualitative must be >= 0, got {num_qualitative}.")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.num_qualitative = int(num_qualitative)
        self.qualitative_passes = tuple(int(k) for k in qualitative_passes)
        self.metrics = tuple(metrics)
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
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Engine | None = None) -> None:
        """Clear the accumulated values (at the start of every evaluation epoch)."""
        self._passes = PassWiseMetrics(self.metrics)
        self._early = PassWiseMetrics(self.metrics)
        self._used = Cumulative()
        self._seconds: list[float] = []
        self._examples: list[dict[str, Any]] = []
        self._start = time.perf_counter()

    def iteration_completed(self, engine: Engine) -> None:
        """Score the passes of the current batch (called at ``IterationEvents.FORWARD_COMPLETED``)."""
        inferer = engine.inferer
        if not isinstance(inferer, PassWiseInferer) or inferer.last_passes is None:
            raise TypeError(
                f"{type(self).__name__} needs the evaluator's inferer to be a PassWiseInferer that has run, got "
                f"{type(inferer).__name__}."
            )
        output = engine.state.output
        label = output.get(CommonKeys.LABEL) if isinstance(output, Mapping) else None
        if not isinstance(label, torch.Tensor):
            raise ValueError(f"{type(self).__name__} needs labels: the batch has no '{CommonKeys.LABEL}' tensor.")
        passes = inferer.last_passes  # (P, B, 1, *spatial) logits
        binary = torch.sigmoid(passes) > inferer.threshold
        label = label.as_tensor() if hasattr(label, "as_tensor") else label
        for k in range(binary.shape[0]):
            self._passes.update(k, binary[k], label)
        used = early_stop_passes(binary, inferer.tolerance)  # (B,)
        final = binary[used - 1, torch.arange(binary.shape[1], device=binary.device)]  # (B, 1, *spatial)
        self._early.update(0, final, label)
        self._used.extend(used.cpu())
        seconds = inferer.last_pass_seconds
        self._seconds = [a + b for a, b in zip(self._seconds, seconds)] if self._seconds else list(seconds)
        if len(self._examples) < self.num_qualitative:
            self._collect_examples(inferer, output[CommonKeys.IMAGE], label, binary)

    def _collect_examples(
        self, inferer: PassWiseInferer, image: torch.Tensor, label: torch.Tensor, binary: torch.Tensor
    ) -> None:
        """Keep image ``(C, *spatial)``, label, start mask and all pass masks of the batch's first images (CPU)."""
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        start = inferer.make_start_mask(image.float())
        for b in range(min(image.shape[0], self.num_qualitative - len(self._examples))):
            self._examples.append(
                {
                    "image": image[b].detach().float().cpu(),
                    "label": label[b, 0].detach().cpu() > 0.5,
                    "start": start[b, 0].detach().cpu() > 0.5,
                    "passes": binary[:, b, 0].detach().cpu(),  # (P, *spatial)
                }
            )

    def epoch_completed(self, engine: Engine) -> None:
        """Average per pass, add the early-stop row, publish the results and write the files."""
        self.wall_seconds = time.perf_counter() - self._start
        table = self._passes.aggregate()
        if not table:
            self.logger.warning("no image was evaluated; nothing to report.")
            self.rows = []
            return
        used = self._used.get_buffer()
        mean_used = float(used.float().mean()) if isinstance(used, torch.Tensor) and used.numel() else float("nan")
        rows: list[dict[str, Any]] = []
        for k, entry in enumerate(table):
            seconds = self._seconds[k] if k < len(self._seconds) else float("nan")
            row = {"pass": k + 1, **{m: entry[m] for m in self.metrics}, "n_images": entry["n_images"]}
            row.update(mean_passes=float(k + 1), seconds=seconds, images_per_s=_rate(entry["n_images"], seconds))
            rows.append(row)
        early = self._early.aggregate()[0]
        rows.append(
            {
                "pass": "early_stop",
                **{m: early[m] for m in self.metrics},
                "n_images": early["n_images"],
                "mean_passes": mean_used,
                "seconds": float("nan"),
                "images_per_s": float("nan"),
            }
        )
        self.rows = rows
        engine.state.metrics.update({f"early_stop_{m}": early[m] for m in self.metrics})
        engine.state.metrics["early_stop_mean_passes"] = mean_used
        last = rows[-2]
        self.logger.info(
            f"{last['n_images']} images, {len(table)} passes: {last['seconds']:.2f} s network time "
            f"({last['images_per_s']:.2f} images/s), {self.wall_seconds:.2f} s in all.\n{markdown_metrics(rows)}"
        )
        if self.output_dir is None or idist.get_rank() != 0:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_metrics_csv(rows, self.output_dir / "metrics_per_pass.csv", self.metrics)
        if not self.plots:
            return
        _, has_matplotlib = optional_import("matplotlib")
        if not has_matplotlib:
            self.logger.warning("matplotlib is not installed: metrics_per_pass.png and qualitative.png are skipped.")
            return
        plot_metrics_per_pass(rows, self.output_dir / "metrics_per_pass.png", self.metrics)
        if self._examples:
            num_passes = len(table)
            shown = sorted({k for k in self.qualitative_passes if 1 <= k <= num_passes} | {num_passes})
            plot_qualitative(self._examples, shown, self.output_dir / "qualitative.png")


def _rate(count: int, seconds: float) -> float:
    """``count / seconds``, ``nan`` if the time is unknown or zero."""
    return count / seconds if seconds > 0 and math.isfinite(seconds) else float("nan")


def _format(value: Any, digits: int = 4) -> str:
    """Floats with ``digits`` decimals (empty for ``nan``), everything else as ``str``."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def write_metrics_csv(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, metrics: Sequence[str] = PAPER_METRICS
) -> Path:
    """Write the rows of :class:`PassWiseEvaluationHandler` to ``path`` (CSV with a header). Returns the path."""
    columns = ["pass", *metrics, "n_images", "mean_passes", "seconds", "images_per_s"]
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_format(row.get(c, float("nan")), 6) for c in columns])
    return path


def markdown_metrics(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = PAPER_METRICS) -> str:
    """The per-pass rows as a markdown table (pass, metrics, mean passes)."""
    header = ["Pass", *[METRIC_LABELS.get(m, m) for m in metrics], "Passes used"]
    body = [[str(r["pass"]), *[_format(r[m]) for m in metrics], _format(r["mean_passes"], 2)] for r in rows]
    return markdown_table(header, body)


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table from a header and rows of strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` on the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_metrics_per_pass(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, metrics: Sequence[str] = PAPER_METRICS
) -> Path:
    """Metrics against pass number (paper Fig. 5); the early-stop result is drawn as crosses at its mean passes.

    Args:
        rows: rows of :class:`PassWiseEvaluationHandler` (pass rows, optionally an ``early_stop`` row).
        path: PNG file to write.
        metrics: metric names to draw.

    Returns:
        ``path``.
    """
    pass_rows = [r for r in rows if r["pass"] != "early_stop"]
    early = [r for r in rows if r["pass"] == "early_stop"]
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    x = [int(r["pass"]) for r in pass_rows]
    for name in metrics:
        (line,) = ax.plot(x, [r[name] for r in pass_rows], marker="o", markersize=3, label=METRIC_LABELS[name])
        if early and math.isfinite(early[0]["mean_passes"]):
            ax.plot([early[0]["mean_passes"]], [early[0][name]], marker="x", markersize=8, color=line.get_color())
    ax.set_xlabel("refinement pass")
    ax.set_ylabel("metric (mean over images)")
    n_images = pass_rows[0]["n_images"] if pass_rows else 0
    title = f"Metrics per feedback pass ({n_images} images)"
    if early:
        title += f"; x = early stop, {early[0]['mean_passes']:.2f} passes on average"
    ax.set_title(title, fontsize=10)
    ax.set_xticks(x)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.savefig(path, dpi=120)
    return Path(path)


def _display(array: torch.Tensor) -> Any:
    """``(*spatial)`` or ``(C, *spatial)`` 2-D tensor -> numpy array for ``imshow``: MONAI's first spatial axis
    (the image's width for PIL-loaded bitmaps) becomes the horizontal axis, channels go last."""
    if array.ndim == 2:
        return array.T.float().numpy()
    return array[:3].permute(2, 1, 0).clamp(0, 1).float().numpy()


def plot_qualitative(
    examples: Sequence[Mapping[str, torch.Tensor]], passes: Sequence[int], path: str | os.PathLike
) -> Path:
    """Image, ground truth, start mask and the masks of some passes for a few images (paper Figs. 1 and 3).

    Args:
        examples: dicts with ``image`` ``(C, H, W)`` in ``[0, 1]``, ``label`` and ``start`` ``(H, W)`` boolean,
            ``passes`` ``(num_passes, H, W)`` boolean (2-D images only; 3-D volumes are skipped).
        passes: 1-based passes to show.
        path: PNG file to write.

    Returns:
        ``path``.
    """
    examples = [e for e in examples if e["label"].ndim == 2]
    columns = ["Image", "Ground truth", "Otsu start", *[f"Pass {k}" for k in passes]]
    fig = _figure(1.8 * len(columns), 1.9 * max(len(examples), 1))
    axes = fig.subplots(max(len(examples), 1), len(columns), squeeze=False)
    for i, example in enumerate(examples):
        label = example["label"]
        panels = [(_display(example["image"]), ""), (_display(label), ""), (_display(example["start"]), "")]
        for k in passes:
            mask = example["passes"][k - 1]
            inter = float((mask & label).sum())
            dice = 2 * inter / max(float(mask.sum() + label.sum()), 1.0) if (mask.any() or label.any()) else 1.0
            panels.append((_display(mask), f"F1 {dice:.3f}"))
        for j, (data, note) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(data, cmap=None if data.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=9)
            if note:
                ax.set_xlabel(note, fontsize=8)
    for ax in axes.flat[len(examples) * len(columns) :]:
        ax.axis("off")
    fig.savefig(path, dpi=100)
    return Path(path)


def _gmac(network: torch.nn.Module, input_channels: int, size: Sequence[int]) -> float:
    """Multiply-accumulates (10^9) of one forward pass at ``size`` (ptflops, pytorch backend); ``nan`` without
    ptflops."""
    ptflops, has_ptflops = optional_import("ptflops")
    if not has_ptflops:
        return float("nan")
    net = copy.deepcopy(network).eval()
    macs, _ = ptflops.get_model_complexity_info(
        net, (input_channels, *size), as_strings=False, print_per_layer_stat=False, backend="pytorch"
    )
    return float(macs) / 1e9 if macs is not None else float("nan")


def ablation_table(
    checkpoints: Mapping[str, str | os.PathLike],
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike = "ablation",
    num_passes: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    config_files: Sequence[str | os.PathLike] | None = None,
    flops_size: Sequence[int] = (512, 512),
    print_table: bool = True,
) -> list[dict[str, Any]]:
    """Paper Table IX: evaluate B1 - B4 checkpoints with the evaluation bundle and tabulate them.

    Each checkpoint is evaluated by running ``train.json`` + ``evaluate.json`` (id ``evaluating``) in-process
    with :class:`monai.bundle.ConfigWorkflow`, with ``ckpt_path``, ``network_def#variant`` and ``num_passes``
    overridden: B1 and B2 (B4's weights) with one pass, B3 and B4 with ``num_passes``. The metrics are those of
    the last pass. Each evaluation writes its CSV and figures to ``output_dir/<name>``; the table is written to
    ``output_dir/ablation.md`` and ``output_dir/ablation.csv``.

    Args:
        checkpoints: ``{"B1": path, "B2": path, "B3": path, "B4": path}`` (any subset, in this order) of network
            weights (``model.pt`` from training; B2 normally is the B4 checkpoint).
        dataset_dir: dataset folder or datalist JSON (the bundle's ``dataset_dir``).
        output_dir: folder of the results.
        num_passes: passes of B3 and B4; ``None`` keeps the bundle's ``num_passes``.
        overrides: more bundle overrides for every run, e.g. ``{"image_size": [256, 256], "eval_split": "test",
            "network_def#channels": [8, 16, 16, 16]}``.
        config_files: bundle configs; default: this project's ``train.json`` and ``evaluate.json``.
        flops_size: spatial size of the GMac count (paper: 512 x 512); one network evaluation.
        print_table: print the markdown table.

    Returns:
        one dict per row with keys :data:`TABLE_IX_COLUMNS` (``Method``; metrics as floats; ``Param`` = number of
        parameters; ``GMac`` per pass, ``nan`` without ptflops; ``FPS`` = images per second of network time for
        all the row's passes), plus ``passes``.

    Raises:
        ValueError: a name that is not one of :data:`ABLATION_VARIANTS`.
    """
    from fanet_monai.bundle import bundle_configs, run_workflow

    unknown = sorted(set(checkpoints) - set(ABLATION_VARIANTS))
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; valid names: {list(ABLATION_VARIANTS)}.")
    files = [str(f) for f in config_files] if config_files else bundle_configs("train", "evaluate")
    out = Path(output_dir)
    rows: list[dict[str, Any]] = []
    for name in (n for n in ABLATION_VARIANTS if n in checkpoints):
        variant, refined = ABLATION_VARIANTS[name]
        settings: dict[str, Any] = {**(overrides or {}), "dataset_dir": str(dataset_dir)}
        settings.update({"ckpt_path": str(checkpoints[name]), "network_def#variant": variant})
        settings["output_dir"] = str(out / name)
        if not refined:
            settings["num_passes"] = 1
        elif num_passes is not None:
            settings["num_passes"] = int(num_passes)
        workflow = run_workflow(files, "evaluating", **settings)
        handler: PassWiseEvaluationHandler = workflow.parser.get_parsed_content("evaluate#pass_metrics")
        network: torch.nn.Module = workflow.parser.get_parsed_content("network")
        in_channels = int(getattr(network, "in_channels", 3)) + 1  # image channels + the feedback mask
        workflow.finalize()
        last = [r for r in handler.rows if r["pass"] != "early_stop"][-1]
        row: dict[str, Any] = {"Method": name}
        row.update({METRIC_LABELS[m]: float(last[m]) for m in PAPER_METRICS})
        row["Param"] = sum(p.numel() for p in network.parameters())
        row["GMac"] = _gmac(network, in_channels, flops_size)
        row["FPS"] = float(last["images_per_s"])
        row["passes"] = int(last["pass"])
        rows.append(row)

    body = [
        [
            r["Method"],
            *[_format(r[c]) for c in METRIC_LABELS.values()],
            f"{r['Param'] / 1e6:.2f}M",
            "n/a" if math.isnan(r["GMac"]) else f"{r['GMac']:.2f}",
            _format(r["FPS"], 2),
        ]
        for r in rows
    ]
    table = markdown_table(TABLE_IX_COLUMNS, body)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(table + "\n")
    with open(out / "ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*TABLE_IX_COLUMNS, "passes"])
        writer.writeheader()
        writer.writerows(rows)
    if print_table:
        print(table)
    return rows
