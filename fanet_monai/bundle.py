"""Loading this project's bundle configs as MONAI ``ConfigWorkflow`` objects (one place for the CLI, the ablation
table, the benchmarks and the tests).

Where the bundle is: the repository's ``bundle/`` is its only source. A wheel carries it as the package data of
``fanet_monai.packaged_bundle`` (``setup.py`` maps that package to ``bundle/``), found with :mod:`importlib.resources`;
a source checkout (editable install, or the checkout on ``PYTHONPATH``) uses its own ``bundle/`` directly.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, List, Sequence

from monai.bundle import ConfigWorkflow

__all__ = ["bundle_configs", "load_workflow", "packaged_bundle_dir", "run_workflow"]



@lru_cache(maxsize=None)
def packaged_bundle_dir() -> Path:
    """The directory of the bundle that ships with ``fanet_monai``: the checkout's ``bundle/`` next to the imported
    package when there is one, else the installed package data ``fanet_monai/packaged_bundle``. Raises
    ``FileNotFoundError`` saying what to do when neither is there (a wheel built without its bundle)."""
    checkout = Path(__file__).resolve().parents[1] / "bundle"
    if (checkout / "__init__.py").is_file() and (checkout / "configs").is_dir():
        return checkout
    try:
        installed = Path(str(resources.files("fanet_monai.packaged_bundle")))
    except ModuleNotFoundError:
        installed = None
    if installed is None or not (installed / "configs").is_dir():
        raise FileNotFoundError(
            f"the fanet-monai installation at {Path(__file__).resolve().parent} has no bundle configs "
            "(fanet_monai/packaged_bundle/configs): reinstall it from a wheel built by `pip wheel .`, or pass "
            "--bundle_dir to point at a bundle.")
    return installed


def bundle_configs(*names: str, bundle_dir: str | os.PathLike | None = None) -> List[str]:
    """Paths of ``bundle_dir/configs/{name}.json`` (default: :func:`packaged_bundle_dir`); raises
    ``FileNotFoundError`` naming the missing file."""
    root = Path(bundle_dir) if bundle_dir else packaged_bundle_dir()
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
