"""Shared test set-up.

- ``pytest -m "not slow"``: the everyday subset (under 3 minutes on 2 CPU cores); CI runs everything. Tests over
  about 10 s (bundle trainings, ``torchrun`` runs, exports, the CLI demo) carry ``@pytest.mark.slow``.
- The repository root is on ``sys.path`` (``pythonpath`` in ``pyproject.toml``), so ``benchmarks`` imports from any
  working directory.
- :func:`tiny_overrides` / :func:`tiny_training`: ``train.json`` at a size that trains in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from monai.bundle import ConfigWorkflow

from fanet_monai.bundle import bundle_configs, load_workflow


def _tiny_overrides(bundle_root: str | Path, dataset_dir: str | Path, **extra: Any) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "bundle_root": str(bundle_root),
        "dataset_dir": str(dataset_dir),
        "image_size": [64, 64],
        "batch_size": 4,
        "num_workers": 0,
        "max_epochs": 2,
        "num_passes": 2,
        "show_progress": False,
        "network_def#channels": [8, 16, 16, 16],
    }
    overrides.update(extra)
    return overrides


@pytest.fixture
def tiny_overrides() -> Callable[..., dict[str, Any]]:
    """``make(bundle_root, dataset_dir, **extra)``: overrides of ``train.json`` for a 64², narrow, 2-epoch run."""
    return _tiny_overrides


@pytest.fixture
def tiny_training() -> Callable[..., ConfigWorkflow]:
    """``make(bundle_root, dataset_dir, **extra)``: an initialized ``train.json`` workflow with the tiny overrides."""

    def make(bundle_root: str | Path, dataset_dir: str | Path, **extra: Any) -> ConfigWorkflow:
        return load_workflow(bundle_configs("train"), **_tiny_overrides(bundle_root, dataset_dir, **extra))

    return make


@pytest.fixture(scope="session")
def tiny_bundle_root(tmp_path_factory) -> Path:
    """A bundle root with real weights (six short epochs of a narrow FANet at 64²) in ``models/model.pt``, for the
    DICOM and PACS tests (:mod:`dicom_support`)."""
    from dicom_support import train_tiny_bundle

    return train_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"))


@pytest.fixture
def orthanc(tmp_path):
    """A real Orthanc with DICOMweb on loopback (:class:`dicom_support.OrthancServer`), stopped after the test; tests
    that use it skip when Orthanc is not installed (their ``needs_orthanc`` mark)."""
    from dicom_support import OrthancServer

    server = OrthancServer(tmp_path / "orthanc")
    server.start()
    yield server
    server.stop()
