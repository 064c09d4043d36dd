"""A small synthetic segmentation set on disk (for the demo and the tests): bright blobs on a shaded background."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from monai.data.synthetic import create_test_image_2d
from PIL import Image

__all__ = ["make_synthetic_dataset"]


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    num_images: int = 40,
    height: int = 96,
    width: int = 96,
    noise: float = 0.5,
    shading: float = 0.6,
    seed: int = 0,
    rgb: bool = True,
) -> Path:
    """Write ``out_dir/images/case_NNN.png`` (uint8, RGB or gray) and ``out_dir/masks/case_NNN.png`` (0/255).

    The objects are MONAI's :func:`~monai.data.synthetic.create_test_image_2d` blobs with added noise and a random
    linear illumination gradient, so that Otsu on the image (the paper's initial mask) is a rough start that
    training has to improve on. Returns ``out_dir``.
    """
    rng = np.random.RandomState(seed)
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(num_images):
        image, mask = create_test_image_2d(
            height, width, num_objs=8, rad_max=max(4, min(height, width) // 8), rad_min=3,
            noise_max=noise, num_seg_classes=1, random_state=rng,
        )
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx / width + np.sin(angle) * yy / height
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        image = image + shading * ramp
        image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-6)).astype(np.uint8)
        pixels = np.stack([image] * 3, axis=-1) if rgb else image
        Image.fromarray(pixels).save(root / "images" / f"case_{i:03d}.png")
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(root / "masks" / f"case_{i:03d}.png")
    return root
