"""The paper's data augmentation (Sec. IV-A) as MONAI dictionary transforms, online or as offline copies.

Paper: "random crop, flipping, rotation, elastic transformation, grid distortion, optical distortion, grayscale
conversion, random brightness, contrast, channel [shuffle], and coarse dropout". :func:`paper_augmentation` builds
that list, each transform with its own probability; spatial ones move the image (bilinear) and the label and
feedback mask (nearest) together, intensity ones touch the image only.

Feedback training inverts each sample's augmentation to bring the prediction back into the cache frame
(``FeedbackMaskHandler`` → MONAI ``Invertd`` → ``Compose.inverse``). ``Compose.inverse`` *silently skips* every
transform that is not an ``InvertibleTransform`` — and MONAI's ``Rand2DElasticd`` and ``RandGridDistortiond`` are
not: with them the prediction would be cached in the deformed frame, misaligned, without any error. So the
non-rigid warps here are this module's own invertible transforms (:class:`RandWarpd` subclasses; MONAI has no
optical distortion at all):

- :class:`RandCropResized` — random crop (a window of 70-100 % of each side, random position) resized back to the
  input size (so batches keep one shape); exact inverse.
- :class:`RandElasticd` — smooth random displacement field (cubic interpolation of random control-point shifts,
  the B-spline-style elastic deformation); inverse by fixed-point iteration.
- :class:`RandGridDistortd` — per-axis piecewise-linear stretching of a grid of cells (as albumentations'
  / MONAI's grid distortion, normalized to keep the image extent); exact inverse.
- :class:`RandOpticalDistortd` — radial (barrel/pincushion) lens distortion about a jittered centre (as
  albumentations' optical distortion); inverse by fixed-point iteration.

:func:`check_feedback_augmentation` (called by ``train.json`` before training) rejects augmentations that would
silently misalign the feedback masks: a transform that lists the mask key but is not invertible, or a spatial
transform that moves the image but not the mask.

Offline expansion (Table I's "train after aug."): :func:`expand_offline` writes N fixed augmented copies of every
training image (``prepare(..., offline_copies=N)``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    InvertibleTransform,
    MapTransform,
    RandCoarseDropoutd,
    RandFlipd,
    RandomizableTransform,
    RandRotated,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    ScaleIntensityRanged,
)
from monai.data.meta_obj import get_track_meta
from monai.utils import TraceKeys, convert_to_dst_type, convert_to_tensor, ensure_tuple_rep

from fanet_monai.feedback.otsu import to_grayscale_torch

__all__ = [
    "AUGMENTATIONS",
    "PAPER_PROBS",
    "RandChannelShuffled",
    "RandCropResized",
    "RandElasticd",
    "RandGrayscaled",
    "RandGridDistortd",
    "RandOpticalDistortd",
    "RandWarpd",
    "check_feedback_augmentation",
    "choose_augmentation",
    "expand_offline",
    "paper_augmentation",
]

#: per-transform probabilities of :func:`paper_augmentation` (the paper gives none; the reference code uses 0.3 for
#: its rotation, flips and coarse dropout)
PAPER_PROBS: Dict[str, float] = {
    "crop": 0.3,
    "rotate": 0.3,
    "flip_h": 0.3,
    "flip_v": 0.3,
    "elastic": 0.2,
    "grid": 0.2,
    "optical": 0.2,
    "grayscale": 0.1,
    "brightness": 0.3,
    "contrast": 0.3,
    "channel_shuffle": 0.1,
    "dropout": 0.3,
}

#: names of the augmentation choices of ``train.json`` (``--augmentation``)
AUGMENTATIONS = ("light", "paper", "none")


# -- invertible warps -------------------------------------------------------------------------------------------------
def _identity_coords(shape: Sequence[int]) -> torch.Tensor:
    """Normalized ``(H, W, 2)`` pixel-centre coordinates, last dim ``(x, y)``, -1/+1 at the first/last pixel."""
    h, w = int(shape[0]), int(shape[1])
    ys = torch.linspace(-1.0, 1.0, h, dtype=torch.float64) if h > 1 else torch.zeros(1, dtype=torch.float64)
    xs = torch.linspace(-1.0, 1.0, w, dtype=torch.float64) if w > 1 else torch.zeros(1, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


class RandWarpd(RandomizableTransform, MapTransform, InvertibleTransform):
    """Base of the invertible random 2-D warps: ``out(p) = in(forward_map(p))`` on normalized coordinates.

    A subclass draws its parameters in :meth:`sample_params` (a small dict of floats and lists, stored in the
    MetaTensor's transform trace) and maps coordinates in :meth:`forward_map`; :meth:`inverse_map` defaults to the
    fixed-point iteration ``q ← p − d(q)`` with ``d = forward_map − id``, which converges for the smooth, small
    displacements used here (Lipschitz constant of ``d`` below 1). All keys must have the same spatial shape; each
    key has its interpolation ``mode`` (``"bilinear"`` for images, ``"nearest"`` for masks) and ``padding_mode``
    (``"zeros"``, ``"border"``, ``"reflection"``), recorded in the trace so the inverse (and ``Invertd``, and the
    feedback handler's zero-padding coverage trick) can use them.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        mode: Sequence[str] | str = "bilinear",
        padding_mode: Sequence[str] | str = "reflection",
        allow_missing_keys: bool = False,
        inverse_iterations: int = 30,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = ensure_tuple_rep(padding_mode, len(self.keys))
        self.inverse_iterations = inverse_iterations
        self._params: Dict[str, Any] = {}

    # -- subclass API
    def sample_params(self) -> Dict[str, Any]:
        raise NotImplementedError

    def forward_map(self, coords: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        """Where each output point ``(..., 2)`` samples the input (normalized ``(x, y)``)."""
        raise NotImplementedError

    #: compute the (smooth) inverse on a grid of at most this many points per side and interpolate it bilinearly
    #: (``None``: at every pixel)
    inverse_resolution: Optional[int] = None

    def inverse_map(self, coords: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        """Where each input point lands in the output: solves ``forward_map(q) = coords`` for ``q``."""
        q = coords.clone()
        for _ in range(self.inverse_iterations):
            q = coords - (self.forward_map(q, params) - q)
        return q

    def inverse_grid(self, shape: Sequence[int], params: Mapping[str, Any]) -> torch.Tensor:
        """:meth:`inverse_map` of every pixel of ``shape`` (``(H, W, 2)``)."""
        limit = self.inverse_resolution
        identity = _identity_coords(shape)
        if limit is None or max(shape) <= limit:
            return self.inverse_map(identity, params)
        coarse_shape = (min(int(shape[0]), limit), min(int(shape[1]), limit))
        coarse = _identity_coords(coarse_shape)
        shift = (self.inverse_map(coarse, params) - coarse).permute(2, 0, 1)[None]
        dense = F.interpolate(shift, size=tuple(int(s) for s in shape), mode="bilinear", align_corners=True)
        return identity + dense[0].permute(1, 2, 0)

    # -- MONAI API
    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._params = self.sample_params()

    @staticmethod
    def _resample(image: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
        data = convert_to_tensor(image, track_meta=False)
        values = data.to(torch.float32)[None]
        out = F.grid_sample(
            values, grid[None].to(values), mode=str(mode), padding_mode=str(padding_mode), align_corners=True
        )[0]
        return convert_to_dst_type(out, image, dtype=image.dtype)[0]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        grid: Optional[torch.Tensor] = None
        shape = None
        for key, mode, padding_mode in self.key_iterator(d, self.mode, self.padding_mode):
            image = convert_to_tensor(d[key], track_meta=get_track_meta())
            if image.ndim != 3:
                raise ValueError(f"{type(self).__name__}: {key} must be channel-first 2-D (C, H, W), got {image.shape}.")
            if shape is None:
                shape = tuple(image.shape[1:])
            elif tuple(image.shape[1:]) != shape:
                raise ValueError(
                    f"{type(self).__name__}: {key} has spatial shape {tuple(image.shape[1:])}, the others {shape}."
                )
            extra: Dict[str, Any] = {}
            if self._do_transform:
                if grid is None:
                    grid = self.forward_map(_identity_coords(shape), self._params)
                image = self._resample(image, grid, mode, padding_mode)
                extra = {"params": self._params, "mode": mode, "padding_mode": padding_mode}
            d[key] = self.push_transform(image, extra_info=extra, orig_size=shape)
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            transform = self.pop_transform(d[key])
            if not transform[TraceKeys.DO_TRANSFORM]:
                continue
            info = transform[TraceKeys.EXTRA_INFO]
            grid = self.inverse_grid(tuple(d[key].shape[1:]), info["params"])
            d[key] = self._resample(d[key], grid, info["mode"], info["padding_mode"])
        return d


class RandCropResized(RandWarpd):
    """Random crop resized back to the input size: a window of ``scale`` ∈ ``scale_range`` of each side (same
    aspect as the image) at a random position."""

    def __init__(self, keys: KeysCollection, prob: float = 0.1, scale_range: Sequence[float] = (0.7, 1.0), **kwargs):
        super().__init__(keys, prob, **kwargs)
        low, high = float(scale_range[0]), float(scale_range[1])
        if not 0 < low <= high <= 1:
            raise ValueError(f"scale_range must satisfy 0 < low <= high <= 1, got {scale_range}.")
        self.scale_range = (low, high)

    def sample_params(self) -> Dict[str, Any]:
        scale = float(self.R.uniform(*self.scale_range))
        cx, cy = (float(self.R.uniform(-(1 - scale), 1 - scale)) for _ in range(2))
        return {"scale": scale, "center": [cx, cy]}

    def forward_map(self, coords, params):
        return coords * params["scale"] + coords.new_tensor(params["center"])

    def inverse_map(self, coords, params):
        return (coords - coords.new_tensor(params["center"])) / params["scale"]


class RandElasticd(RandWarpd):
    """Elastic deformation: random shifts of ``control_points`` × ``control_points`` points (uniform, up to
    ``magnitude`` of the image extent), interpolated bicubically to a smooth dense displacement field. Its inverse
    (fixed-point iteration) is computed on a grid of at most 128 × 128 points and interpolated: the field is smooth
    on the scale of the control-point spacing."""

    inverse_resolution = 128

    def __init__(
        self, keys: KeysCollection, prob: float = 0.1, magnitude: float = 0.04, control_points: int = 6, **kwargs
    ):
        super().__init__(keys, prob, **kwargs)
        if control_points < 2:
            raise ValueError(f"control_points must be at least 2, got {control_points}.")
        self.magnitude = float(magnitude)
        self.control_points = int(control_points)

    def sample_params(self) -> Dict[str, Any]:
        n = self.control_points
        field = self.R.uniform(-1.0, 1.0, size=(2, n, n)) * 2 * self.magnitude  # normalized units: extent = 2
        return {"field": field.round(6).tolist()}

    def forward_map(self, coords, params):
        field = coords.new_tensor(params["field"])[None]  # (1, 2, n, n): (dx, dy) on a control grid
        flat = coords.reshape(1, -1, 1, 2)
        shift = F.grid_sample(field, flat, mode="bicubic", padding_mode="border", align_corners=True)  # (1,2,N,1)
        return coords + shift[0, :, :, 0].T.reshape(coords.shape)


class RandGridDistortd(RandWarpd):
    """Grid distortion: each axis is cut into ``num_cells`` cells whose widths are scaled by a random factor in
    ``1 ± distort_limit`` (then normalized so the image extent is kept)."""

    def __init__(
        self, keys: KeysCollection, prob: float = 0.1, num_cells: int = 5, distort_limit: float = 0.3, **kwargs
    ):
        super().__init__(keys, prob, **kwargs)
        if not 0 <= distort_limit < 1:
            raise ValueError(f"distort_limit must be in [0, 1), got {distort_limit}.")
        self.num_cells = int(num_cells)
        self.distort_limit = float(distort_limit)

    def sample_params(self) -> Dict[str, Any]:
        steps = 1.0 + self.R.uniform(-self.distort_limit, self.distort_limit, size=(2, self.num_cells))
        return {"steps": steps.round(6).tolist()}

    def _knots(self, params):
        out = np.linspace(-1.0, 1.0, self.num_cells + 1)
        knots = []
        for steps in params["steps"]:
            cumulative = np.concatenate([[0.0], np.cumsum(steps)])
            knots.append(-1.0 + 2.0 * cumulative / cumulative[-1])
        return out, knots

    def _map(self, coords, params, inverse: bool):
        out, knots = self._knots(params)
        mapped = []
        for axis in range(2):
            values = coords[..., axis].numpy()
            src, dst = (knots[axis], out) if inverse else (out, knots[axis])
            mapped.append(torch.as_tensor(np.interp(values, src, dst), dtype=coords.dtype))
        return torch.stack(mapped, dim=-1)

    def forward_map(self, coords, params):
        return self._map(coords, params, inverse=False)

    def inverse_map(self, coords, params):
        return self._map(coords, params, inverse=True)


class RandOpticalDistortd(RandWarpd):
    """Optical (lens) distortion: ``p ↦ c + (p − c)(1 + k |p − c|² / 2)`` with ``k`` ∈ ``±distort_limit``
    (barrel for k < 0, pincushion for k > 0) and the centre ``c`` jittered by up to ``shift_limit``. Its inverse is
    solved on a grid of at most 128 × 128 points and interpolated (the map is smooth)."""

    inverse_resolution = 128

    def __init__(
        self, keys: KeysCollection, prob: float = 0.1, distort_limit: float = 0.2, shift_limit: float = 0.1, **kwargs
    ):
        super().__init__(keys, prob, **kwargs)
        if not 0 <= distort_limit <= 0.25:
            raise ValueError(f"distort_limit must be in [0, 0.25] (invertibility), got {distort_limit}.")
        self.distort_limit = float(distort_limit)
        self.shift_limit = float(shift_limit)

    def sample_params(self) -> Dict[str, Any]:
        k = float(self.R.uniform(-self.distort_limit, self.distort_limit))
        cx, cy = (float(self.R.uniform(-self.shift_limit, self.shift_limit)) for _ in range(2))
        return {"k": k, "center": [cx, cy]}

    def forward_map(self, coords, params):
        center = coords.new_tensor(params["center"])
        offset = coords - center
        radius2 = (offset**2).sum(-1, keepdim=True) / 2
        return center + offset * (1 + params["k"] * radius2)

    def inverse_map(self, coords, params):
        """Radial: solve ``s (1 + k s² / 2) = ρ`` by Newton's method (monotone from ``s = ρ``). Points a barrel
        distortion does not show (``ρ`` beyond the maximum of the cubic) map far outside the image (padding)."""
        center = coords.new_tensor(params["center"])
        k = float(params["k"])
        offset = coords - center
        rho = offset.norm(dim=-1, keepdim=True)
        s = rho.clone()
        for _ in range(self.inverse_iterations):
            s = (s - (s * (1 + k * s**2 / 2) - rho) / (1 + 1.5 * k * s**2).clamp_min(1e-3)).clamp_min(0)
        solved = ((s * (1 + k * s**2 / 2) - rho).abs() < 1e-6) & (1 + 1.5 * k * s**2 > 0)
        scale = torch.where(rho > 0, s / rho.clamp_min(1e-12), torch.ones_like(rho))
        # unseen points: far out along their own ray, so that interpolating the grid keeps them out of the image
        return center + offset * torch.where(solved, scale, torch.full_like(scale, 100.0))


# -- intensity transforms (image only) ------------------------------------------------------------------------------
class RandGrayscaled(RandomizableTransform, MapTransform):
    """With probability ``prob``, replace an RGB image by its luminance (ITU-R BT.601) in all three channels."""

    def __init__(self, keys: KeysCollection, prob: float = 0.1, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] != 3:
                continue
            gray = to_grayscale_torch(convert_to_tensor(image, track_meta=False).float()[None])[0]
            d[key] = convert_to_dst_type(gray.repeat(3, 1, 1), image)[0]
        return d


class RandChannelShuffled(RandomizableTransform, MapTransform):
    """With probability ``prob``, permute the channels of the image randomly."""

    def __init__(self, keys: KeysCollection, prob: float = 0.1, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            order = torch.as_tensor(self.R.permutation(image.shape[0]))
            d[key] = convert_to_dst_type(convert_to_tensor(image, track_meta=False)[order], image)[0]
        return d


# -- builders ---------------------------------------------------------------------------------------------------------
def paper_augmentation(
    image_size: Sequence[int] = (256, 256),
    image_key: str = "image",
    mask_keys: Sequence[str] = ("label", "mask"),
    prob: float | Mapping[str, float] | None = None,
    include: Optional[Sequence[str]] = None,
    allow_missing_keys: bool = True,
    padding_mode: str = "reflection",
) -> List[MapTransform]:
    """The paper's augmentation list (see the module doc), in this order: crop, rotate, flip_h, flip_v, elastic,
    grid, optical, grayscale, channel_shuffle, brightness, contrast, (clip to [0, 1]), dropout.

    Args:
        image_size: spatial size of the images it sees (only the coarse-dropout hole size, 1/8 of it, depends on it).
        image_key: the image (bilinear; the only key intensity transforms touch).
        mask_keys: keys moved with the image by nearest interpolation: the label and the feedback mask (and e.g. a
            FOV mask). Missing keys are skipped (``allow_missing_keys``), so the same list serves offline expansion.
        prob: one probability for all, a dict overriding :data:`PAPER_PROBS` by name, or ``None`` (the defaults).
        include: names of :data:`PAPER_PROBS` to use (default all).
        padding_mode: padding of the non-rigid warps (rotation pads with zeros, as the reference code).
    """
    probs = dict(PAPER_PROBS)
    if isinstance(prob, Mapping):
        unknown = set(prob) - set(probs)
        if unknown:
            raise ValueError(f"unknown augmentation names {sorted(unknown)}; known: {list(probs)}.")
        probs.update({k: float(v) for k, v in prob.items()})
    elif prob is not None:
        probs = {k: float(prob) for k in probs}
    names = list(probs) if include is None else list(include)
    unknown = set(names) - set(probs)
    if unknown:
        raise ValueError(f"unknown augmentation names {sorted(unknown)}; known: {list(probs)}.")
    keys = [image_key, *mask_keys]
    modes = ["bilinear"] + ["nearest"] * len(mask_keys)
    warp = {"mode": modes, "padding_mode": padding_mode, "allow_missing_keys": allow_missing_keys}
    size = [int(s) for s in image_size]
    image_only = {"allow_missing_keys": allow_missing_keys}
    builders = {
        "crop": lambda p: RandCropResized(keys, prob=p, **warp),
        "rotate": lambda p: RandRotated(
            keys, range_x=math.radians(35), prob=p, mode=modes, padding_mode="zeros",
            allow_missing_keys=allow_missing_keys,
        ),
        "flip_h": lambda p: RandFlipd(keys, prob=p, spatial_axis=1, allow_missing_keys=allow_missing_keys),
        "flip_v": lambda p: RandFlipd(keys, prob=p, spatial_axis=0, allow_missing_keys=allow_missing_keys),
        "elastic": lambda p: RandElasticd(keys, prob=p, **warp),
        "grid": lambda p: RandGridDistortd(keys, prob=p, **warp),
        "optical": lambda p: RandOpticalDistortd(keys, prob=p, **warp),
        "grayscale": lambda p: RandGrayscaled(image_key, prob=p, **image_only),
        "channel_shuffle": lambda p: RandChannelShuffled(image_key, prob=p, **image_only),
        "brightness": lambda p: RandShiftIntensityd(image_key, offsets=0.2, prob=p, **image_only),
        "contrast": lambda p: RandScaleIntensityFixedMeand(image_key, factors=0.2, prob=p, **image_only),
        "dropout": lambda p: RandCoarseDropoutd(
            image_key, holes=10, spatial_size=[max(1, s // 8) for s in size], fill_value=0.0, prob=p,
            **image_only,
        ),
    }
    order = ["crop", "rotate", "flip_h", "flip_v", "elastic", "grid", "optical",
             "grayscale", "channel_shuffle", "brightness", "contrast", "dropout"]
    chosen = [name for name in order if name in names and probs[name] > 0]
    transforms: List[MapTransform] = []
    for name in chosen:
        transforms.append(builders[name](probs[name]))
        if name == "contrast" or (name == "brightness" and "contrast" not in chosen):
            # brightness and contrast can leave [0, 1]: clip before the dropout holes are filled with 0
            transforms.append(ScaleIntensityRanged(image_key, 0.0, 1.0, 0.0, 1.0, clip=True, **image_only))
    return transforms


def choose_augmentation(name: str, choices: Mapping[str, Sequence[Any]]) -> List[Any]:
    """``choices[name]`` as a list (``train.json``: ``--augmentation light|paper|none``)."""
    if name not in choices:
        raise ValueError(f"augmentation must be one of {', '.join(choices)}, got {name!r}.")
    return list(choices[name] or [])


def _flatten(transforms: Any) -> List[Any]:
    if isinstance(transforms, Compose):
        return [t for inner in transforms.transforms for t in _flatten(inner)]
    if isinstance(transforms, (list, tuple)):
        return [t for inner in transforms for t in _flatten(inner)]
    return [transforms]


def _is_spatial(transform: Any) -> bool:
    module = type(transform).__module__
    return isinstance(transform, RandWarpd) or module.startswith(
        ("monai.transforms.spatial", "monai.transforms.croppad")
    )


def check_feedback_augmentation(
    transforms: Sequence[Any] | Compose, mask_key: str = "mask", image_key: str = "image"
) -> List[Any]:
    """Return ``transforms`` as a list after checking they keep the feedback masks aligned.

    Raises ``ValueError`` naming the transform when one lists ``mask_key`` but is not an ``InvertibleTransform``
    (``Compose.inverse`` would skip it silently: e.g. MONAI's ``Rand2DElasticd``, ``RandGridDistortiond`` — use
    :class:`RandElasticd`, :class:`RandGridDistortd` instead), or when a spatial transform moves ``image_key`` but
    not ``mask_key``.
    """
    for transform in _flatten(transforms):
        keys = list(getattr(transform, "keys", ()) or ())
        name = type(transform).__name__
        if mask_key in keys and not isinstance(transform, InvertibleTransform):
            raise ValueError(
                f"{name} moves the feedback mask {mask_key!r} but is not invertible: the feedback handler could not "
                f"map predictions back through it (MONAI's Compose.inverse skips it silently). Use an invertible "
                f"equivalent from fanet_monai.augmentation (RandElasticd, RandGridDistortd, RandOpticalDistortd) "
                f"or drop it."
            )
        if image_key in keys and mask_key not in keys and _is_spatial(transform):
            raise ValueError(
                f"{name} moves the image {image_key!r} but not the feedback mask {mask_key!r}: list {mask_key!r} in its "
                f"keys (nearest interpolation) so the mask stays aligned with the image."
            )
    return list(_flatten(transforms)) if isinstance(transforms, Compose) else list(transforms)


# -- offline expansion ------------------------------------------------------------------------------------------------
def _to_hwc(array: torch.Tensor) -> np.ndarray:
    """``(C, X, Y)`` as MONAI loads bitmaps (reverse indexing) → ``(Y, X, C)`` rows × columns for PIL."""
    return np.transpose(convert_to_tensor(array, track_meta=False).cpu().numpy(), (2, 1, 0))


def expand_offline(
    items: Sequence[Mapping[str, str]],
    out_dir: str | os.PathLike,
    copies: int,
    seed: int = 0,
    prob: float | Mapping[str, float] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    extra_keys: Sequence[str] = ("fov",),
) -> List[Dict[str, str]]:
    """Write ``copies`` fixed augmented copies of every item (:func:`paper_augmentation` at the item's own size,
    seeded) as ``out_dir/{images,masks,<extra>}/<stem>_augNN.png`` (image uint8 RGB, masks 0/255) and return their
    datalist entries (absolute paths), in item order. 16-bit images are written as 8-bit copies."""
    from monai.transforms import LoadImaged
    from PIL import Image

    from fanet_monai.data.checks import _stem
    from fanet_monai.data.readers import BitmapReader
    from fanet_monai.transforms import AsRGBd, BinarizeLabeld, ScaleToUnitd

    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}.")
    root = Path(out_dir)
    mask_keys = [label_key, *extra_keys]
    load = Compose([
        LoadImaged([image_key, *mask_keys], reader=BitmapReader, dtype=None, image_only=True,
                   ensure_channel_first=True, allow_missing_keys=True),
        ScaleToUnitd(image_key),
        AsRGBd(image_key),
        BinarizeLabeld(mask_keys, allow_missing_keys=True),
    ])
    rng = np.random.RandomState(seed)
    expanded: List[Dict[str, str]] = []
    for item in items:
        present = [k for k in mask_keys if k in item]
        sample = load({k: item[k] for k in [image_key, *present]})
        size = tuple(sample[image_key].shape[1:])
        augment = Compose(paper_augmentation(size, image_key, present, prob=prob))
        stem = _stem(str(item[image_key]))
        for copy in range(copies):
            augment.set_random_state(seed=int(rng.randint(0, 2**31 - 1)))
            out = augment({k: v.clone() for k, v in sample.items()})
            entry: Dict[str, str] = {}
            for key in [image_key, *present]:
                folder = {image_key: "images", label_key: "masks"}.get(key, key)
                path = root / folder / f"{stem}_aug{copy:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = _to_hwc(out[key])
                if key == image_key:
                    array = (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
                else:
                    array = ((pixels[..., 0] > 0.5) * 255).astype(np.uint8)
                Image.fromarray(array).save(path)
                entry[key] = str(path.absolute())
            expanded.append(entry)
    return expanded
