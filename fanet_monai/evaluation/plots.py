"""Figures of the pass-wise evaluation: metrics per pass (paper Fig. 5) and qualitative passes (Figs. 1 and 3).

Drawn on matplotlib's Agg canvas without pyplot (no global backend switch). :data:`has_matplotlib` says whether
matplotlib can be imported; the evaluation handler skips the figures with a warning when it cannot.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.metrics import compute_dice
from monai.utils import optional_import

from fanet_monai.evaluation.reports import BOUNDARY_LABELS, CONNECTIVITY_LABELS, METRIC_LABELS
from fanet_monai.metrics import PAPER_METRICS

__all__ = ["has_matplotlib", "plot_metrics_per_pass", "plot_qualitative"]

Figure, has_matplotlib = optional_import("matplotlib.figure", name="Figure")
FigureCanvasAgg, _ = optional_import("matplotlib.backends.backend_agg", name="FigureCanvasAgg")


def _figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` on the Agg canvas (no pyplot, no global backend switch)."""
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
        metrics: metric names to draw (multi-class: with the per-class Dice and surface Dice columns); the counts
            (Betti-0 error, components) and distances (HD95) are left out of this 0-1 plot (they are in the CSV).

    Returns:
        ``path``.
    """
    pass_rows = [r for r in rows if r["pass"] != "early_stop"]
    early = [r for r in rows if r["pass"] == "early_stop"]
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    x = [int(r["pass"]) for r in pass_rows]
    labels = {**METRIC_LABELS, "cldice": CONNECTIVITY_LABELS["cldice"], "surface_dice": BOUNDARY_LABELS["surface_dice"]}
    # multi-class: the (surface) Dice of each class and their mean (:func:`~fanet_monai.metrics.class_dice_names`)
    for prefix, name in (("dice_class_", "Dice "), ("surface_dice_class_", "Surface Dice ")):
        labels.update({m: name + m.removeprefix(prefix) for m in metrics if m.startswith(prefix)})
    for name in (m for m in metrics if m in labels):
        (line,) = ax.plot(x, [r[name] for r in pass_rows], marker="o", markersize=3, label=labels[name])
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


#: the planes of :func:`orthogonal_slices`: the axis a slice is taken across (MONAI's (x, y, z) after RAS orientation)
PLANES: tuple[tuple[str, int], ...] = (("sagittal", 0), ("coronal", 1), ("axial", 2))


def orthogonal_slices(example: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """A 3-D example (``image`` ``(C, X, Y, Z)``, ``label``/``start`` ``(X, Y, Z)``, ``passes`` ``(P, X, Y, Z)``)
    as three 2-D examples: the sagittal, coronal and axial slices through the ground truth's centre of mass (the
    volume's centre when the label is empty), each with its ``plane`` name. A 2-D example is returned as it is."""
    label = example["label"]
    if label.ndim == 2:
        return [dict(example)]
    found = torch.nonzero(label)
    centre = found.float().mean(0).round().long() if len(found) else torch.tensor(label.shape) // 2
    slices = []
    for plane, axis in PLANES:
        index = int(centre[axis])
        slices.append({
            "plane": f"{plane} {index}",
            "image": example["image"].select(axis + 1, index),
            "label": label.select(axis, index),
            "start": example["start"].select(axis, index),
            "passes": example["passes"].select(axis + 1, index),
        })
    return slices


def plot_qualitative(
    examples: Sequence[Mapping[str, torch.Tensor]], passes: Sequence[int], path: str | os.PathLike
) -> Path:
    """Image, ground truth, start mask and the masks of some passes for a few images (paper Figs. 1 and 3); a
    volume takes three rows, its sagittal, coronal and axial slices through the ground truth
    (:func:`orthogonal_slices`).

    Args:
        examples: dicts with ``image`` ``(C, *spatial)`` in ``[0, 1]``, ``label`` and ``start`` ``(*spatial)``
            boolean, ``passes`` ``(num_passes, *spatial)`` boolean; 2 or 3 spatial dimensions.
        passes: 1-based passes to show.
        path: PNG file to write.

    Returns:
        ``path``. The F1 under each pass is that of the slice shown.
    """
    examples = [row for e in examples for row in orthogonal_slices(e)]
    columns = ["Image", "Ground truth", "Otsu start", *[f"Pass {k}" for k in passes]]
    fig = _figure(1.8 * len(columns), 1.9 * max(len(examples), 1))
    axes = fig.subplots(max(len(examples), 1), len(columns), squeeze=False)
    for i, example in enumerate(examples):
        label = example["label"]
        panels = [(_display(example["image"]), ""), (_display(label), ""), (_display(example["start"]), "")]
        for k in passes:
            mask = example["passes"][k - 1]
            dice = float(compute_dice(mask[None, None].float(), label[None, None].float(), ignore_empty=False))
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
        if "plane" in example:
            axes[i, 0].set_ylabel(example["plane"], fontsize=8)
    for ax in axes.flat[len(examples) * len(columns) :]:
        ax.axis("off")
    fig.savefig(path, dpi=100)
    return Path(path)
