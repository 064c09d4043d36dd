"""Synthetic segmentation sets on disk (demo, tests, studies): bright blobs, or thin vessel-like curves, on a shaded
background.

The sets that need native resolution (1024² thin vessels, 3-D tubes with gaps, multi-class 3-D blobs) are in
:mod:`fanet_monai.data.synthetic_structures`, which uses this module's folder, shading, saving and tree helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from monai.data.synthetic import create_test_image_2d
from PIL import Image
from skimage.draw import disk
from skimage.filters import gaussian

__all__ = ["make_synthetic_dataset", "make_thin_structure_dataset"]


def _output_root(out_dir: str | os.PathLike) -> Path:
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    return root


def _illumination_ramp(rng: np.random.RandomState, height: int, width: int) -> np.ndarray:
    """A linear illumination gradient in a random direction, scaled to [0, 1]: ``(height, width)`` float32."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx / width + np.sin(angle) * yy / height
    return (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)


def _save_pair(root: Path, name: str, image: np.ndarray, mask: np.ndarray, rgb: bool) -> None:
    """``image`` (uint8 ``(H, W)``) as gray or RGB PNG, ``mask`` (bool/0-1) as a 0/255 PNG, both named ``name``."""
    Image.fromarray(np.stack([image] * 3, axis=-1) if rgb else image).save(root / "images" / name)
    Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(root / "masks" / name)


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
    root = _output_root(out_dir)
    for i in range(num_images):
        image, mask = create_test_image_2d(
            height, width, num_objs=8, rad_max=max(4, min(height, width) // 8), rad_min=3,
            noise_max=noise, num_seg_classes=1, random_state=rng,
        )
        image = image + shading * _illumination_ramp(rng, height, width)
        image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-6)).astype(np.uint8)
        _save_pair(root, f"case_{i:03d}.png", image, mask, rgb)
    return root


def _grow_vessel_tree(
    rng: np.random.RandomState,
    height: int,
    width: int,
    max_width: float,
    taper: float = 1.0,
    min_width: float = 1.0,
    max_branches: int = 24,
    include_start: bool = False,
) -> list[list[tuple[float, float, float]]]:
    """Branches of one tree entering the image from a random border point: lists of centre-line points
    ``(y, x, width)`` one pixel apart; side branches are shorter and thinner than their parent.

    The trunk starts ``max_width`` wide; ``taper < 1`` also thins every branch by that factor per pixel, never
    below ``min_width`` (``taper=1``: widths change only at branch points). At most ``max_branches`` branches.
    ``include_start``: each branch also starts with its starting point (on the border or on its parent)."""
    side = rng.randint(4)
    t = rng.uniform(0.15, 0.85)
    y, x, heading = {
        0: (0.0, t * width, np.pi / 2),
        1: (height - 1.0, t * width, -np.pi / 2),
        2: (t * height, 0.0, 0.0),
        3: (t * height, width - 1.0, np.pi),
    }[side]
    size = height + width
    branches: list[list[tuple[float, float, float]]] = []
    todo = [(y, x, heading + rng.normal(0, 0.3), max_width, 0, size)]
    while todo and len(branches) < max_branches:
        y, x, heading, w, depth, length = todo.pop()
        points: list[tuple[float, float, float]] = [(y, x, w)] if include_start else []
        turn = 0.0
        for _ in range(int(length)):
            turn = 0.8 * turn + rng.normal(0, 0.035)  # smooth curvature
            heading += turn
            y, x = y + np.sin(heading), x + np.cos(heading)
            if not (0 <= y < height and 0 <= x < width):
                break
            if taper < 1.0:
                w = max(min_width, w * taper)
            points.append((y, x, w))
            if depth < 3 and rng.uniform() < 0.015:
                side_turn = rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
                side_width = max(min_width, 0.7 * w)
                todo.append((y, x, heading + side_turn, side_width, depth + 1, rng.uniform(0.1, 0.35) * size))
                w = max(min_width, 0.9 * w)
        branches.append(points)
    return branches


def make_thin_structure_dataset(
    out_dir: str | os.PathLike,
    num_images: int = 40,
    height: int = 96,
    width: int = 96,
    num_trees: tuple[int, int] = (2, 4),
    widths: tuple[float, float] = (1.0, 4.0),
    contrast: tuple[float, float] = (0.25, 1.0),
    noise: float = 0.12,
    shading: float = 0.5,
    gap_probability: float = 0.01,
    polarity: str = "dark",
    seed: int = 0,
    rgb: bool = True,
) -> Path:
    """Write a vessel-like thin-structure set: ``out_dir/images/vessel_NNN.png`` and ``out_dir/masks/...`` (0/255).

    Each image holds ``num_trees`` branching curves grown as smooth random walks from the border, 1–4 px wide
    (``widths``: trunk width range; branches get thinner, never below 1 px), drawn with a per-tree contrast from
    ``contrast`` over a linearly shaded background with Gaussian noise. **Gaps**: with ``gap_probability`` per
    centre-line pixel a 3–8 px stretch of the curve is not drawn in the image while it stays in the mask — the
    broken, low-contrast stretches that connectivity-aware refinement is meant to close. ``polarity="dark"`` draws
    the structures darker than the background (fundus vessels, EM membranes), ``"bright"`` brighter.
    Returns ``out_dir``.
    """
    if polarity not in ("dark", "bright"):
        raise ValueError(f"polarity must be 'dark' or 'bright', got {polarity!r}.")
    rng = np.random.RandomState(seed)
    root = _output_root(out_dir)
    for i in range(num_images):
        mask = np.zeros((height, width), dtype=bool)
        signal = np.zeros((height, width), dtype=np.float32)
        for _ in range(rng.randint(num_trees[0], num_trees[1] + 1)):
            strength = rng.uniform(*contrast)
            for branch in _grow_vessel_tree(rng, height, width, rng.uniform(*widths)):
                gap_left = 0
                for y, x, w in branch:
                    if w < 1.5:  # 1 px: the rounded centre line (points 1 px apart stay 8-connected)
                        rr, cc = np.array([int(round(min(y, height - 1)))]), np.array([int(round(min(x, width - 1)))])
                    else:
                        rr, cc = disk((y, x), w / 2, shape=(height, width))
                    mask[rr, cc] = True
                    if gap_left == 0 and rng.uniform() < gap_probability:
                        gap_left = rng.randint(3, 9)  # a 3-8 px stretch missing from the image
                    if gap_left:
                        gap_left -= 1
                        continue
                    signal[rr, cc] = np.maximum(signal[rr, cc], strength)
        ramp = _illumination_ramp(rng, height, width)
        signal = gaussian(signal, sigma=0.7)
        sign = -1.0 if polarity == "dark" else 1.0
        image = 0.5 + shading * (ramp - 0.5) + 0.45 * sign * signal + rng.normal(0, noise, size=mask.shape)
        image = (255 * np.clip(image, 0, 1)).astype(np.uint8)
        _save_pair(root, f"vessel_{i:03d}.png", image, mask, rgb)
    return root
