"""Paper Table IX: the ablation of FANet's variants B1 - B4, each evaluated with the evaluation bundle.

:func:`ablation_table` runs ``train.json`` + ``evaluate.json`` once per checkpoint (in-process, with
:func:`fanet_monai.bundle.run_workflow`) and tabulates the last pass of each
(:class:`~fanet_monai.evaluation.PassWiseEvaluationHandler`) with the network's size, GMac and speed.
"""

from __future__ import annotations

import copy
import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.utils import optional_import

from fanet_monai.bundle import bundle_configs, run_workflow
from fanet_monai.evaluation import PassWiseEvaluationHandler
from fanet_monai.evaluation.reports import METRIC_LABELS, TABLE_IX_COLUMNS, format_value, markdown_table
from fanet_monai.io import atomic_write
from fanet_monai.metrics import PAPER_METRICS
from fanet_monai.networks import FANET_VARIANTS

__all__ = ["ABLATION_VARIANTS", "ablation_table"]

#: Paper Table IX rows, the FANet variants: B2 is B4's network (and weights) evaluated with one pass
#: (``FANET_VARIANTS[name]["passes"]``); B3 and B4 are refined for ``num_passes`` passes.
ABLATION_VARIANTS: tuple[str, ...] = tuple(FANET_VARIANTS)


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
    overridden: B1 and B2 (B4's network and weights) with one pass, B3 and B4 with ``num_passes``. The metrics are those of
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
    unknown = sorted(set(checkpoints) - set(ABLATION_VARIANTS))
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; valid names: {list(ABLATION_VARIANTS)}.")
    files = [str(f) for f in config_files] if config_files else bundle_configs("train", "evaluate")
    out = Path(output_dir)
    rows: list[dict[str, Any]] = []
    for name in (n for n in ABLATION_VARIANTS if n in checkpoints):
        settings: dict[str, Any] = {**(overrides or {}), "dataset_dir": str(dataset_dir)}
        settings.update({"ckpt_path": str(checkpoints[name]), "network_def#variant": name})
        settings["output_dir"] = str(out / name)
        if FANET_VARIANTS[name]["passes"] == 1:
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
            *[format_value(r[c]) for c in METRIC_LABELS.values()],
            f"{r['Param'] / 1e6:.2f}M",
            "n/a" if math.isnan(r["GMac"]) else f"{r['GMac']:.2f}",
            format_value(r["FPS"], 2),
        ]
        for r in rows
    ]
    table = markdown_table(TABLE_IX_COLUMNS, body)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "ablation.md", "w") as f:
        f.write(table + "\n")
    with atomic_write(out / "ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*TABLE_IX_COLUMNS, "passes"])
        writer.writeheader()
        writer.writerows(rows)
    if print_table:
        print(table)
    return rows
