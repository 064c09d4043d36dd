"""Loading this project's bundle configs as MONAI ``ConfigWorkflow`` objects (one place for the CLI, the ablation
table, the benchmarks and the tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Sequence

from monai.bundle import ConfigWorkflow

__all__ = ["BUNDLE_DIR", "bundle_configs", "load_workflow", "run_workflow"]

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundle"


def bundle_configs(*names: str, bundle_dir: str | os.PathLike | None = None) -> List[str]:
    """Paths of ``bundle_dir/configs/{name}.json``; raises ``FileNotFoundError`` naming the missing file."""
    root = Path(bundle_dir) if bundle_dir else BUNDLE_DIR
    paths = [root / "configs" / f"{name}.json" for name in names]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: bundle config not found (pass --bundle_dir to point at the bundle).")
    return [str(p) for p in paths]


def load_workflow(config_files: Sequence[str | os.PathLike], run_id: str = "run", **overrides: Any) -> ConfigWorkflow:
    """An initialized ``ConfigWorkflow`` over ``config_files`` (merged in order), with the ``metadata.json`` and
    ``logging.conf`` found next to the first file; ``overrides`` set config ids (``"network_def#variant"`` etc.)."""
    configs = Path(config_files[0]).parent
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in config_files],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        run_id=run_id,
        **overrides,
    )
    workflow.initialize()
    return workflow


def run_workflow(config_files: Sequence[str | os.PathLike], run_id: str, **overrides: Any) -> ConfigWorkflow:
    """:func:`load_workflow`, then run ``run_id``; returns the workflow (its objects stay inspectable)."""
    workflow = load_workflow(config_files, run_id, **overrides)
    workflow.run()
    return workflow
