"""The where-to-look map in the bundle (``fanet infer --where_to_look instability``; issue 22, item 3).

``inference.json``'s ``where_to_look`` (``false``; ``true`` = :data:`DEFAULT_MAP`, ``"confidence"``; or
``"instability"``, ``"starts"``:
:mod:`fanet_monai.inferers.review`) wraps the refinement inferer in :class:`WhereToLookInferer`, which returns the
logits with the map as **one more channel**. The postprocessing then moves that channel to its own key
(:class:`SplitWhereToLookd`), where it travels with the mask through ``Invertd`` (so it lands on the input's grid,
interpolated linearly) and is written next to each mask by :func:`where_to_look_writer`: a heat-map PNG
(``<name>_where_to_look.png``, matplotlib's ``inferno``: dark = nothing to look at, bright = look here) for 2-D
images, a float32 map in the mask's format (``<name>_where_to_look.nii.gz``) for volumes. With ``where_to_look``
off every piece is a no-op and the inferer is the plain refinement inferer.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import MapTransform, SaveImaged

from fanet_monai.data.files import BITMAP_SUFFIXES
from fanet_monai.inferers.refinement import INPUT_STARTS, IterativeRefinementInferer, split_input_start
from fanet_monai.inferers.review import WHERE_TO_LOOK, where_to_look

__all__ = ["DEFAULT_MAP", "MAP_KEY", "SCORE_KEY", "SplitWhereToLookd", "WhereToLookInferer", "WhereToLookImaged",
           "WhereToLookResultd", "check_where_to_look", "where_to_look_inferer", "where_to_look_score",
           "where_to_look_writer"]

#: the map ``where_to_look=True`` means: the confidence baseline found the wrong pixels best on every data set of
#: ``benchmarks/annotation_loop.py`` (average precision and AUROC above the feedback maps; README), and costs no pass
DEFAULT_MAP = "confidence"
#: the data key of the map in the postprocessing
MAP_KEY = "where_to_look"
#: the per-image score's name: in MONAI Label's result JSON and in its datastore's image info
SCORE_KEY = "where_to_look_score"


def where_to_look_score(look: torch.Tensor) -> float:
    """One number per image for choosing what a person reviews next: the mean of the map ``(1, *spatial)`` over
    the image (the share of the image, weighted by how strongly it is flagged, worth looking at), in [0, 1]."""
    return float(torch.as_tensor(look).float().clamp(0, 1).mean())


def check_where_to_look(value: Any) -> str | None:
    """``None`` (off) for ``False``/``None``, :data:`DEFAULT_MAP` for ``True``, else one of :data:`WHERE_TO_LOOK`."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_MAP
    if value in WHERE_TO_LOOK:
        return str(value)
    raise ValueError(f"where_to_look must be True, False or one of {list(WHERE_TO_LOOK)}, got {value!r}.")


class WhereToLookInferer(Inferer):
    """``refinement``'s logits ``(B, C, *spatial)`` and the where-to-look map ``method`` as channel ``C``: returns
    ``(B, C + 1, *spatial)`` (a :class:`~monai.data.MetaTensor` with the inputs' metadata when they carry it).

    With ``start_mask="last_channel"`` (refine-my-mask) the inputs' last channel is the start mask; it is also the
    ``"given"`` start of the ``"starts"`` map. With ``start_mask="annotator_channels"`` the annotator's reviewed
    pixels are kept in every refinement (the map is then 0 there: nothing left to look at)."""

    def __init__(self, refinement: IterativeRefinementInferer, method: str = DEFAULT_MAP) -> None:
        super().__init__()
        self.refinement = refinement
        self.method = check_where_to_look(method) or DEFAULT_MAP

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        images, mask, inferer = inputs, kwargs.pop("mask", None), self.refinement
        constraint = kwargs.pop("constraint", None)
        if inferer.start_mask in INPUT_STARTS:
            images, mask, constraint = split_input_start(torch.as_tensor(inputs), inferer.start_mask)
            inferer = copy.copy(inferer)
            inferer.start_mask = "otsu"
        if args or kwargs:
            raise ValueError("the where-to-look map takes no extra network arguments.")
        logits, look = where_to_look(inferer, torch.as_tensor(images), network, self.method, mask=mask,
                                     constraint=constraint)
        out = torch.cat([logits, look.to(logits.dtype)], dim=1)
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(out)
            out.copy_meta_from(inputs)
        return out


def where_to_look_inferer(refinement: IterativeRefinementInferer, method: Any) -> Inferer:
    """``refinement`` itself when ``method`` is off, else :class:`WhereToLookInferer` around it."""
    method = check_where_to_look(method)
    return refinement if method is None else WhereToLookInferer(refinement, method)


class SplitWhereToLookd(MapTransform):
    """Move the map channel (the last one of ``pred``) to :data:`MAP_KEY` (``(1, *spatial)``, ``pred``'s
    metadata); a no-op when ``enabled`` is off."""

    def __init__(self, enabled: Any, keys: str = "pred") -> None:
        super().__init__(keys)
        self.enabled = check_where_to_look(enabled) is not None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            pred = d[key]
            d[MAP_KEY], d[key] = pred[-1:].clone(), pred[:-1]
        return d


class WhereToLookImaged(MapTransform):
    """The map as written: an RGB heat map ``(3, *spatial)`` uint8 (``inferno``) for bitmaps, float32 in [0, 1]
    for volumes; a no-op when the map is absent."""

    def __init__(self, output_ext: str, keys: str = MAP_KEY) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.heat_map = str(output_ext).lower() in BITMAP_SUFFIXES

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            look = d[key]
            values = look.clamp(0, 1).float()
            if self.heat_map:
                from matplotlib import colormaps

                rgb = colormaps["inferno"](values[0].cpu().numpy())[..., :3]  # (*spatial, 3) in [0, 1]
                rgb = torch.as_tensor(np.moveaxis(np.round(rgb * 255), -1, 0).astype(np.uint8))
                values = MetaTensor(rgb, meta=look.meta) if isinstance(look, MetaTensor) else rgb
            d[key] = values
        return d


def where_to_look_writer(output_dir: str, output_ext: str) -> SaveImaged:
    """``SaveImaged`` of the map next to each mask: ``<name>_where_to_look.png`` (uint8 heat map) for bitmaps,
    ``<name>_where_to_look<ext>`` (float32) for volumes; skips images without a map."""
    heat_map = str(output_ext).lower() in BITMAP_SUFFIXES
    return SaveImaged(keys=MAP_KEY, output_dir=output_dir, output_postfix=MAP_KEY,
                      output_ext=".png" if heat_map else output_ext,
                      output_dtype=np.uint8 if heat_map else np.float32, resample=False, separate_folder=False,
                      print_log=False, allow_missing_keys=True)


class WhereToLookResultd(MapTransform):
    """MONAI Label's ``<model>_where_to_look`` task: the map (on the input's grid, after ``Invertd``) becomes the
    result that the client receives, as ``uint8`` 0..255 (255 = look here) in ``pred``'s place, and its
    :func:`where_to_look_score` goes into the result JSON (``data["result"]``) under :data:`SCORE_KEY`; a no-op
    when ``enabled`` is off or the map is absent."""

    def __init__(self, enabled: Any, keys: str = "pred") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.enabled = bool(enabled)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        look = d.get(MAP_KEY)
        if not self.enabled or look is None:
            return d
        for key in self.key_iterator(d):
            scaled = torch.round(torch.as_tensor(look).float().clamp(0, 1) * 255)
            d[key] = MetaTensor(scaled, meta=d[key].meta) if isinstance(d[key], MetaTensor) else scaled
        d["result"] = {**dict(d.get("result") or {}), SCORE_KEY: where_to_look_score(look)}
        return d
