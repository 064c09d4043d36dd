"""Shared pieces of the DICOM/PACS tests: a tiny trained bundle root, its inference overrides, dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from fanet_monai.bundle import bundle_configs, load_workflow
from fanet_monai.data import make_synthetic_dataset

SIZE = 64
#: inference overrides matching the tiny trained network
INFER = {"image_size": [SIZE, SIZE], "num_passes": 2, "num_workers": 0, "network_def#channels": [8, 16, 16, 16]}
DCIODVFY = shutil.which("dciodvfy")


def train_tiny_bundle(root: Path) -> Path:
    """One epoch of FANet at 64² with narrow widths: real weights in ``root/models/model.pt``."""
    data = make_synthetic_dataset(root / "data", num_images=8, height=SIZE, width=SIZE, seed=5)
    workflow = load_workflow(bundle_configs("train"), "training", bundle_root=str(root), dataset_dir=str(data),
                             max_epochs=1, batch_size=4, show_progress=False, **INFER)
    workflow.run()
    assert (root / "models" / "model.pt").is_file()
    return root


def fanet_infer_png(bundle_root: Path, pixels: np.ndarray, work: Path) -> np.ndarray:
    """``fanet infer`` (the bundle's own run) on a PNG of ``pixels``: the mask ``(H, W)`` bool."""
    from fanet_monai.cli import FanetCLI

    images, masks = work / "png", work / "png_masks"
    images.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(images / "img.png")
    FanetCLI().infer(str(images), str(masks), bundle_root=str(bundle_root), **INFER)
    return np.asarray(Image.open(masks / "img.png")) > 0


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def smooth_rgb(height: int, width: int, seed: int) -> np.ndarray:
    """A synthetic uint8 RGB image with bright blobs (MONAI ``create_test_image_2d``), smooth enough for JPEG."""
    from monai.data.synthetic import create_test_image_2d

    image, _ = create_test_image_2d(height, width, num_objs=4, rad_max=max(6, min(height, width) // 5),
                                    noise_max=0.05, num_seg_classes=1, random_state=np.random.RandomState(seed))
    gray = (255 * (image - image.min()) / max(float(image.max() - image.min()), 1e-6)).astype(np.uint8)
    return np.stack([gray, (gray * 0.8).astype(np.uint8), 255 - gray], axis=-1)
