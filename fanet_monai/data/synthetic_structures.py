"""Synthetic structures that only native resolution segments well (patch training, sliding-window inference):
thin branching vessels in 2-D (1024² by default) and 3-D volumes, either a tree of tubes with short gaps or
multi-class ellipsoid blobs.

2-D sets use the folder layout of :func:`~fanet_monai.data.synthetic.make_synthetic_dataset`: ``images/NAME.png``
(uint8, RGB or gray) and ``masks/NAME.png`` (0/255) with the same names. 3-D sets use the same ``images/`` +
``masks/`` layout with NIfTI files: ``images/NAME.nii.gz`` (float32, one channel, no channel axis) and
``masks/NAME.nii.gz`` (uint8 labels ``0..K``), with a diagonal affine of the given voxel spacing (mm). Everything
is deterministic given the seed (or the ``np.random.RandomState`` passed in).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter, zoom
from scipy.spatial.transform import Rotation
from skimage.draw import polygon
from skimage.morphology import ball

from fanet_monai.data.synthetic import _grow_vessel_tree, _illumination_ramp, _output_root, _save_pair

__all__ = [
    "VOLUME_KINDS",
    "make_blob_volume",
    "make_tube_volume",
    "make_vessel_dataset",
    "make_vessel_image",
    "make_volume_dataset",
]

#: the ``kind`` values of :func:`make_volume_dataset`
VOLUME_KINDS: tuple[str, ...] = ("tubes", "blobs")
#: vessel trees grow on a grid of at most this many pixels a side, then are scaled up to the image: large images
#: hold the same smooth trees (with absolute, thin widths) rather than tangles of pixel-scale wiggles
_TREE_GRID = 256
#: centre-line points per polygon when drawing a vessel branch (short pieces: cheap to fill, no self-overlap)
_POLYGON_POINTS = 16


def _as_rng(rng: np.random.RandomState | int) -> np.random.RandomState:
    return rng if isinstance(rng, np.random.RandomState) else np.random.RandomState(rng)


def _smooth_field(rng: np.random.RandomState, shape: Sequence[int], cells: int = 4) -> np.ndarray:
    """A smooth random field scaled to ``[0, 1]``: float32 array of ``shape`` (a ``cells``-per-axis Gaussian noise
    grid, cubic-spline upsampled), for illumination and bias fields."""
    coarse = rng.normal(size=(cells,) * len(shape))
    field = zoom(coarse, [size / cells for size in shape], order=3, mode="nearest", grid_mode=True)
    return ((field - field.min()) / max(float(np.ptp(field)), 1e-6)).astype(np.float32)


def _scale_branch(branch: list[tuple[float, float, float]], scale_y: float, scale_x: float) -> np.ndarray:
    """``(y, x, width)`` centre-line points grown on a coarser grid, scaled by ``scale_y``/``scale_x`` and
    resampled one pixel apart along the curve (widths interpolated): ``(N, 3)`` float64."""
    points = np.asarray(branch, dtype=np.float64).reshape(-1, 3) * [scale_y, scale_x, 1.0]
    if len(points) < 2:
        return points
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points[:, :2], axis=0), axis=1))])
    samples = np.arange(0.0, arc[-1] + 1e-9, 1.0)
    return np.stack([np.interp(samples, arc, points[:, i]) for i in range(3)], axis=1)


def _vessel_pixels(branches: list[np.ndarray], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(rows, cols)`` (int64 ``(P,)``, repeats possible) of branches of ``(N, 3)`` centre-line points
    ``(y, x, width)`` one pixel apart: the rounded centre line (8-connected, the 1 px tips) plus, where a branch is at
    least 1.5 px wide, polygons offset by half the width to either side of it."""
    rows, cols = [], []
    for points in branches:
        if not len(points):
            continue
        centre = np.floor(points[:, :2] + 0.5).astype(np.int64)
        rows.append(np.minimum(centre[:, 0], height - 1))
        cols.append(np.minimum(centre[:, 1], width - 1))
        thick = int(np.count_nonzero(points[:, 2] >= 1.5))  # widths never grow along a branch: a prefix
        if len(points) < 2 or thick < 2:
            continue
        tangent = np.gradient(points[:, :2], axis=0)
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-6)
        offset = normal * points[:, 2:3] / 2
        left, right = points[:, :2] + offset, points[:, :2] - offset
        for start in range(0, thick - 1, _POLYGON_POINTS):
            piece = slice(start, min(start + _POLYGON_POINTS, thick - 1) + 1)
            outline = np.concatenate([left[piece], right[piece][::-1]])
            rr, cc = polygon(outline[:, 0], outline[:, 1], shape=(height, width))
            rows.append(rr)
            cols.append(cc)
    empty = np.zeros(0, dtype=np.int64)
    return np.concatenate(rows + [empty]).astype(np.int64), np.concatenate(cols + [empty]).astype(np.int64)


def make_vessel_image(
    height: int,
    width: int,
    rng: np.random.RandomState | int,
    num_trees: tuple[int, int] = (3, 6),
    root_width: tuple[float, float] = (4.0, 6.0),
    tip_width: float = 1.0,
    contrast: tuple[float, float] = (0.25, 0.5),
    noise: float = 0.04,
    shading: float = 0.6,
    max_branches: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """One fundus-like image of thin branching vessels: ``(image, mask)``, ``image`` uint8 ``(height, width)``
    (gray), ``mask`` bool ``(height, width)``.

    ``num_trees`` trees (for a 256 px image; times ``sqrt(max(height, width) / 256)``, at least 1) grow from the
    border as smooth random walks that branch recursively (on a grid of at most 256 px a side, scaled up to the
    image, so that large images hold smooth trees, not tangles). Each trunk starts ``root_width`` px wide and thins
    along its length (and at every branch point) down to ``tip_width`` px, so that most of the vessel length is
    1–2 px wide. **Polarity: vessels are darker than the background** (as in retinal
    photographs): each tree absorbs a fraction ``contrast`` of the local illumination, blurred by the optics, so thin
    vessels are fainter than thick ones. The background is a smooth illumination (a linear gradient plus a random
    low-frequency field, amplitude ``shading``) with fine texture and Gaussian noise (``noise``): darker than many
    vessels in places, so a global Otsu threshold is a poor start. ``rng``: a ``RandomState`` (advanced) or a seed.
    """
    rng = _as_rng(rng)
    grid_h, grid_w = (max(1, round(side * min(1.0, _TREE_GRID / max(height, width)))) for side in (height, width))
    mask = np.zeros((height, width), dtype=bool)
    absorption = np.zeros((height, width), dtype=np.float32)
    trees = max(1, round(rng.randint(num_trees[0], num_trees[1] + 1) * np.sqrt(max(height, width) / _TREE_GRID)))
    for _ in range(trees):
        trunk = rng.uniform(*root_width)
        taper = (tip_width / trunk) ** (1.0 / (0.6 * (grid_h + grid_w)))  # to the tip width over ~1.2 image sides
        branches = _grow_vessel_tree(rng, grid_h, grid_w, trunk, taper, tip_width, max_branches, include_start=True)
        scaled = [_scale_branch(branch, height / grid_h, width / grid_w) for branch in branches]
        tree = _vessel_pixels(scaled, height, width)
        absorption[tree] = np.maximum(absorption[tree], rng.uniform(*contrast))
        mask[tree] = True
    illumination = 0.5 * _illumination_ramp(rng, height, width) + 0.5 * _smooth_field(rng, (height, width))
    background = 0.55 + shading * (illumination - 0.5)
    texture = gaussian_filter(rng.normal(size=(height, width)), 1.5)
    texture *= noise / max(float(texture.std()), 1e-6)
    image = background * (1.0 - gaussian_filter(absorption, 0.8)) + texture + rng.normal(0, noise, (height, width))
    return (255 * np.clip(image, 0, 1)).astype(np.uint8), mask


def make_vessel_dataset(
    out_dir: str | os.PathLike,
    num_images: int = 20,
    height: int = 1024,
    width: int = 1024,
    seed: int = 0,
    rgb: bool = True,
    noise: float = 0.04,
    shading: float = 0.6,
) -> Path:
    """Write ``out_dir/images/vessels_NNN.png`` (uint8, RGB with equal channels or gray, ``(height, width[, 3])``)
    and ``out_dir/masks/vessels_NNN.png`` (0/255) of :func:`make_vessel_image` (dark vessels on a shaded, noisy
    background). Returns ``out_dir``."""
    rng = np.random.RandomState(seed)
    root = _output_root(out_dir)
    for i in range(num_images):
        image, mask = make_vessel_image(height, width, rng, noise=noise, shading=shading)
        _save_pair(root, f"vessels_{i:03d}.png", image, mask, rgb)
    return root


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


def _grow_tube_tree(
    rng: np.random.RandomState,
    shape: Sequence[int],
    root_radius: float,
    tip_radius: float,
    branch_rate: float = 0.04,
    max_branches: int = 12,
) -> list[np.ndarray]:
    """Branches of one 3-D tree entering the volume through a random face: ``(N, 4)`` float arrays of centre-line
    points ``(i, j, k, radius)`` one voxel apart; the radius thins along the branches from ``root_radius`` to
    ``tip_radius``, side branches leave at ~55° and are shorter and thinner than their parent."""
    extent = np.asarray(shape, dtype=np.float64) - 1
    axis, sign = rng.randint(3), rng.choice([-1.0, 1.0])
    start = rng.uniform(0.2, 0.8, size=3) * extent
    start[axis] = 0.0 if sign > 0 else extent[axis]
    heading = np.zeros(3)
    heading[axis] = sign
    length = 2.0 * float(extent.sum())
    taper = (tip_radius / root_radius) ** (1.0 / (0.5 * length))
    todo = [(start, _unit(heading + rng.normal(0, 0.3, 3)), root_radius, 0, length)]
    branches: list[np.ndarray] = []
    while todo and len(branches) < max_branches:
        position, heading, radius, depth, steps = todo.pop()
        points = []
        turn = np.zeros(3)
        for _ in range(int(steps)):
            turn = 0.8 * turn + rng.normal(0, 0.05, 3)  # smooth curvature
            heading = _unit(heading + turn)
            position = position + heading
            if np.any(position < 0) or np.any(position > extent):
                break
            radius = max(tip_radius, radius * taper)
            points.append((*position, radius))
            if depth < 2 and rng.uniform() < branch_rate:
                side = rng.normal(size=3)
                side = _unit(heading + 1.5 * _unit(side - side.dot(heading) * heading))
                todo.append((position, side, max(tip_radius, 0.75 * radius), depth + 1, rng.uniform(0.2, 0.5) * length))
        branches.append(np.asarray(points, dtype=np.float64).reshape(-1, 4))
    return branches


def _draw_balls(points: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Bool mask of ``shape`` with a :func:`skimage.morphology.ball` of the rounded radius (at least 1) at each of
    the ``(N, 4)`` points ``(i, j, k, radius)``."""
    mask = np.zeros(tuple(shape), dtype=bool)
    centres = np.floor(points[:, :3] + 0.5).astype(np.int64)
    radii = np.maximum(1, np.round(points[:, 3])).astype(np.int64)
    for radius in np.unique(radii):
        offsets = np.argwhere(ball(int(radius))) - radius
        voxels = (centres[radii == radius][:, None, :] + offsets[None]).reshape(-1, 3)
        voxels = voxels[np.all((voxels >= 0) & (voxels < np.asarray(shape)), axis=1)]
        mask[tuple(voxels.T)] = True
    return mask


def make_tube_volume(
    shape: Sequence[int],
    rng: np.random.RandomState | int,
    num_trees: tuple[int, int] = (2, 3),
    radius: tuple[float, float] = (1.0, 3.0),
    gaps: bool = True,
    gap_probability: float = 0.03,
    contrast: float = 0.6,
    noise: float = 0.12,
    bias: float = 0.4,
) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D tree of tubes with short gaps: ``(image, label)``, ``image`` float32 ``shape``, ``label`` uint8
    ``shape`` (0/1).

    ``num_trees`` trees enter through the faces and branch; tube radii thin from ``radius[1]`` voxels at the root to
    ``radius[0]`` at the tips. With ``gaps``, each centre-line voxel starts a gap with ``gap_probability``: a stretch
    of ``2 * ceil(radius) + 4..6`` centre-line voxels left out of both label and image, which leaves about 2–4 empty
    voxels between the tube ends (that a coarse segmentation bridges). The tree geometry does not depend on ``gaps``:
    ``gaps=False`` gives the same tubes unbroken. **Polarity: tubes are brighter than the background** (contrast-
    enhanced vessels): ``0.2 + contrast * blurred label``, plus a smooth multiplicative bias field (``bias``) and
    Gaussian noise (``noise``). ``rng``: a ``RandomState`` (advanced) or a seed.
    """
    rng = _as_rng(rng)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 dimensions, got {shape}.")
    branches = []
    for _ in range(rng.randint(num_trees[0], num_trees[1] + 1)):
        branches += _grow_tube_tree(rng, shape, radius[1], radius[0])
    gap_rng = np.random.RandomState(rng.randint(2**31 - 1))  # drawn either way: same tubes with or without gaps
    kept = []
    for points in branches:
        keep = np.ones(len(points), dtype=bool)
        i = 0
        while i < len(points):
            if gaps and gap_rng.uniform() < gap_probability:
                stretch = 2 * int(np.ceil(points[i, 3])) + 4 + gap_rng.randint(3)
                keep[i : i + stretch] = False
                i += stretch
            i += 1
        kept.append(points[keep])
    label = _draw_balls(np.concatenate(kept + [np.zeros((0, 4))]), shape)
    field = 1.0 + bias * (_smooth_field(rng, shape, cells=3) - 0.5)
    image = (0.2 + contrast * gaussian_filter(label.astype(np.float32), 0.6)) * field
    image = image + rng.normal(0, noise, shape)
    return image.astype(np.float32), label.astype(np.uint8)


def make_blob_volume(
    shape: Sequence[int],
    rng: np.random.RandomState | int,
    num_classes: int = 2,
    blobs_per_class: tuple[int, int] = (1, 3),
    size: tuple[float, float] = (0.08, 0.25),
    noise: float = 0.08,
    bias: float = 0.4,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-class ellipsoids: ``(image, label)``, ``image`` float32 ``shape``, ``label`` uint8 ``shape`` with
    exactly the values ``0..num_classes`` (0: background).

    Each class gets ``blobs_per_class`` randomly rotated ellipsoids, semi-axes a fraction ``size`` of the smallest
    side (at least 1 voxel), centred on a still-background voxel and painted over background only, so every class is
    present. Class ``k`` has intensity ``0.1 + 0.9 * k / num_classes`` (brighter with ``k``), blurred for partial
    volume, times a smooth multiplicative bias field (``bias``), plus Gaussian noise (``noise``). ``rng``: a
    ``RandomState`` (advanced) or a seed.
    """
    rng = _as_rng(rng)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 dimensions, got {shape}.")
    if not 1 <= num_classes <= 255:
        raise ValueError(f"num_classes must be in 1..255 (uint8 labels), got {num_classes}.")
    label = np.zeros(shape, dtype=np.uint8)
    classes = [
        k for k in range(1, num_classes + 1) for _ in range(rng.randint(blobs_per_class[0], blobs_per_class[1] + 1))
    ]
    for k in classes:
        free = np.flatnonzero(label == 0)
        if not free.size:
            break
        centre = np.asarray(np.unravel_index(free[rng.randint(free.size)], shape))
        axes = np.maximum(1.0, rng.uniform(*size, size=3) * min(shape))
        rotation = Rotation.from_quat(rng.normal(size=4)).as_matrix()  # uniform random rotation
        reach = int(np.ceil(axes.max()))
        box = tuple(slice(max(0, c - reach), min(s, c + reach + 1)) for c, s in zip(centre, shape))
        offsets = np.stack(
            np.meshgrid(*[np.arange(b.start, b.stop) - c for b, c in zip(box, centre)], indexing="ij"), -1
        )
        inside = (((offsets @ rotation) / axes) ** 2).sum(axis=-1) <= 1.0
        region = label[box]
        region[inside & (region == 0)] = k
    levels = (0.1 + 0.9 * np.arange(num_classes + 1) / num_classes).astype(np.float32)
    field = 1.0 + bias * (_smooth_field(rng, shape, cells=3) - 0.5)
    image = gaussian_filter(levels[label], 0.6) * field + rng.normal(0, noise, shape)
    return image.astype(np.float32), label


def _save_volume(path: Path, array: np.ndarray, spacing: Sequence[float]) -> None:
    """``array`` as NIfTI at ``path`` (dtype kept), affine ``diag(*spacing, 1)``, units mm."""
    volume = nib.Nifti1Image(array, np.diag([*map(float, spacing), 1.0]))
    volume.header.set_xyzt_units("mm")
    nib.save(volume, str(path))


def make_volume_dataset(
    out_dir: str | os.PathLike,
    num_volumes: int = 8,
    shape: Sequence[int] = (32, 32, 32),
    kind: str = "tubes",
    num_classes: int = 2,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    gaps: bool = True,
    seed: int = 0,
) -> Path:
    """Write ``out_dir/images/KIND_NNN.nii.gz`` (float32 ``shape``) and ``out_dir/masks/KIND_NNN.nii.gz`` (uint8
    ``shape``), affine ``diag(*spacing, 1)`` (mm). ``kind="tubes"``: :func:`make_tube_volume` (labels 0/1, short
    gaps unless ``gaps=False``); ``kind="blobs"``: :func:`make_blob_volume` (labels ``0..num_classes``).
    ``num_classes`` is for blobs only, ``gaps`` for tubes only. Returns ``out_dir``."""
    if kind not in VOLUME_KINDS:
        raise ValueError(f"kind must be one of {VOLUME_KINDS}, got {kind!r}.")
    if len(tuple(spacing)) != 3:
        raise ValueError(f"spacing must have 3 values, got {tuple(spacing)}.")
    rng = np.random.RandomState(seed)
    root = _output_root(out_dir)
    for i in range(num_volumes):
        if kind == "tubes":
            image, label = make_tube_volume(shape, rng, gaps=gaps)
        else:
            image, label = make_blob_volume(shape, rng, num_classes=num_classes)
        name = f"{kind}_{i:03d}.nii.gz"
        _save_volume(root / "images" / name, image, spacing)
        _save_volume(root / "masks" / name, label, spacing)
    return root
