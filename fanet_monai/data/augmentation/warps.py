"""Invertible random 2-D warps for the paper's augmentation (random crop, elastic, grid and optical distortion).

Feedback training inverts each sample's augmentation to bring the prediction back into the cache frame
(``FeedbackMaskHandler`` → MONAI ``Invertd`` → ``Compose.inverse``). ``Compose.inverse`` *silently skips* every
transform that is not an ``InvertibleTransform`` — and MONAI's ``Rand2DElasticd`` and ``RandGridDistortiond`` are
not: with them the prediction would be cached in the deformed frame, misaligned, without any error. So the
non-rigid warps here are invertible (:class:`RandWarpd` subclasses; MONAI has no optical distortion at all):

- :class:`RandCropResized` — random crop (a window of 70-100 % of each side, random position) resized back to the
  input size (so batches keep one shape); exact inverse.
- :class:`RandElasticd` — smooth random displacement field (cubic interpolation of random control-point shifts,
  the B-spline-style elastic deformation); inverse by fixed-point iteration.
- :class:`RandGridDistortd` — per-axis piecewise-linear stretching of a grid of cells (as albumentations'
  / MONAI's grid distortion, normalized to keep the image extent); exact inverse.
- :class:`RandOpticalDistortd` — radial (barrel/pincushion) lens distortion about a jittered centre (as
  albumentations' optical distortion); inverse by fixed-point iteration.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import InvertibleTransform, MapTransform, RandomizableTransform
from monai.utils import TraceKeys, convert_to_dst_type, convert_to_tensor, ensure_tuple_rep

__all__ = ["RandCropResized", "RandElasticd", "RandGridDistortd", "RandOpticalDistortd", "RandWarpd"]


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
    inverse_resolution: int | None = None

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
        grid: torch.Tensor | None = None
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
