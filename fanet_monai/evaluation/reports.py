"""Tables of the pass-wise evaluation: ``metrics_per_pass.csv`` and markdown tables (paper Table IX layout)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fanet_monai.io import atomic_write
from fanet_monai.metrics import PAPER_METRICS

__all__ = ["BOUNDARY_LABELS", "CONNECTIVITY_LABELS", "METRIC_LABELS", "TABLE_IX_COLUMNS", "format_value",
           "markdown_metrics", "markdown_table", "rate", "write_metrics_csv"]

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
#: Display names of the connectivity metrics (:mod:`fanet_monai.topology`).
CONNECTIVITY_LABELS: dict[str, str] = {"cldice": "clDice", "betti0_error": "Betti-0 err", "components": "Components"}
#: Display names of the boundary metrics (:mod:`fanet_monai.surface`).
BOUNDARY_LABELS: dict[str, str] = {"hd95": "HD95", "surface_dice": "Surface Dice"}

#: Columns of the ablation table (paper Table IX).
TABLE_IX_COLUMNS: tuple[str, ...] = ("Method", *METRIC_LABELS.values(), "Param", "GMac", "FPS")


def rate(count: int, seconds: float) -> float:
    """``count / seconds``, ``nan`` if the time is unknown or zero."""
    return count / seconds if seconds > 0 and math.isfinite(seconds) else float("nan")


def format_value(value: Any, digits: int = 4) -> str:
    """Floats with ``digits`` decimals (empty for ``nan``), everything else as ``str``."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def write_metrics_csv(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, metrics: Sequence[str] = PAPER_METRICS
) -> Path:
    """Write the rows of :class:`~fanet_monai.evaluation.passwise.PassWiseEvaluationHandler` to ``path`` (CSV with
    a header). Returns the path."""
    columns = ["pass", *metrics, "n_images", "mean_passes", "seconds", "images_per_s"]
    path = Path(path)
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([format_value(row.get(c, float("nan")), 6) for c in columns])
    return path


def markdown_metrics(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = PAPER_METRICS) -> str:
    """The per-pass rows as a markdown table (pass, metrics, mean passes)."""
    labels = {**METRIC_LABELS, **CONNECTIVITY_LABELS, **BOUNDARY_LABELS}
    header = ["Pass", *[labels.get(m, m) for m in metrics], "Passes used"]
    body = [[str(r["pass"]), *[format_value(r[m]) for m in metrics], format_value(r["mean_passes"], 2)] for r in rows]
    return markdown_table(header, body)


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table from a header and rows of strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)
