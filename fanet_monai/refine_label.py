"""Refine-my-mask: start FANet's refinement from an existing label instead of Otsu's threshold.

FANet's second input is a mask, so an annotator's rough or half-edited label can be handed to the network and
refined. Three routes lead to the same inferer call, ``IterativeRefinementInferer(...)(images, net, mask=label)``:

- Python: pass ``mask=`` ``(B, 1, H, W)`` to :class:`~fanet_monai.inferers.IterativeRefinementInferer`.
- ``fanet infer DIR OUT --start_mask_dir MASKS``: :func:`attach_start_masks` pairs every image with the mask of the
  same file stem under ``label``; the bundle's ``refine_label`` switches :class:`StartMaskFromLabeld` on.
- MONAI Label, which calls ``inferer(images, network)`` only: the request option ``refine_existing_label`` (the
  bundle's ``displayable_configs``, a check box in 3D Slicer) makes :class:`StartMaskFromLabeld` load the label
  uploaded with the request (``label=@mask.png``) or, without one, the image's saved label in the datastore
  (``labels/final/<image id>.*``), and append it to the image as a last channel; the inferer, configured with
  ``start_mask="last_channel"``, takes that channel as its start mask.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform
from monai.utils import ImageMetaKey

from fanet_monai.data.files import file_stem, image_files
from fanet_monai.data.readers import BitmapReader
from fanet_monai.data.transforms import BinarizeLabeld
from fanet_monai.inferers.review import AnnotatorConstraint, check_refine_margin
from fanet_monai.label_server import RequestError

__all__ = ["ANNOTATOR_KEY", "KeepAnnotatorLabeld", "LoadStartLabeld", "StartMaskFromLabeld", "annotator_label",
           "as_flag", "as_unreviewed_value", "attach_start_masks", "datastore_label", "refinement_start",
           "DATASTORE_LABELS"]

#: Where MONAI Label's local datastore keeps an image's final label, relative to the image's folder.
DATASTORE_LABELS = os.path.join("labels", "final")


#: the data key under which :class:`LoadStartLabeld` keeps the annotator's label on the input's grid, for
#: :class:`KeepAnnotatorLabeld`
ANNOTATOR_KEY = "annotator_label"


def as_unreviewed_value(value: Any) -> int | None:
    """The label value that marks "not reviewed yet": ``None`` (every pixel the annotator did not draw is open to
    the network) for ``None``/``""``/``"none"``/``False``, else an integer (e.g. ``255`` for a NIfTI label map,
    ``128`` for a 0/255 PNG); request strings such as ``"255"`` are accepted."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"unreviewed_value must be an integer label value or none, got {value!r}.") from None
    if number != int(number):
        raise ValueError(f"unreviewed_value must be an integer label value or none, got {value!r}.")
    return int(number)


def refinement_start(refine_label: Any, keep_annotator_label: Any, start_mask: str) -> str:
    """The refinement inferer's ``start_mask`` for the bundle's switches: ``"annotator_channels"`` (refine-my-mask
    keeping the annotator's work), ``"last_channel"`` (refine-my-mask, the label only as the start), else
    ``start_mask``."""
    if not as_flag(refine_label):
        return start_mask
    return "annotator_channels" if as_flag(keep_annotator_label) else "last_channel"


def annotator_label(raw: torch.Tensor, num_classes: int = 1, unreviewed_value: int | None = None,
                    binarize: Any = None) -> torch.Tensor:
    """``(2, *spatial)`` float32 ``[codes, reviewed]`` of an annotator's label ``raw`` ``(1 or C, *spatial)``.

    ``codes``: 0/1 (binary, binarized like training labels) or the class codes 0..K; ``reviewed``: 1 where the
    annotator's label is final: with ``unreviewed_value`` every pixel not holding it (their background included),
    without it only the pixels they drew (codes > 0), since a plain label cannot tell "background" from "not looked
    at yet". Unreviewed pixels get code 0."""
    raw = torch.as_tensor(raw)
    raw = raw.as_tensor() if isinstance(raw, MetaTensor) else raw
    if unreviewed_value is None:
        open_pixels = torch.zeros_like(raw[:1], dtype=torch.bool)
    else:
        open_pixels = (raw == unreviewed_value).all(dim=0, keepdim=True)
    cleaned = torch.where(open_pixels, torch.zeros_like(raw), raw)
    binarize = binarize or BinarizeLabeld(keys="mask", num_classes=num_classes)
    codes = torch.as_tensor(binarize({"mask": cleaned})["mask"]).float()
    codes = codes.as_tensor() if isinstance(codes, MetaTensor) else codes
    codes = torch.where(open_pixels, torch.zeros_like(codes), codes)
    reviewed = (codes > 0) if unreviewed_value is None else ~open_pixels
    return torch.cat([codes, reviewed.float()], dim=0)


def as_flag(value: Any) -> bool:
    """A request or config switch as a bool: ``True``/``"true"``/``"1"``/``"yes"``/``"on"`` (any case) → True."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def datastore_label(image_path: str | os.PathLike) -> Path | None:
    """The final label MONAI Label's local datastore keeps for ``image_path`` (``<folder>/labels/final/<stem>.*``),
    or ``None`` when there is none."""
    image = Path(image_path)
    folder = image.parent / DATASTORE_LABELS
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if p.is_file() and file_stem(p) == file_stem(image))
    return found[0] if found else None


def attach_start_masks(
    items: Sequence[Mapping[str, Any]], start_mask_dir: str | os.PathLike | None, key: str = "label"
) -> list[dict[str, Any]]:
    """Pair each ``{"image": path}`` with the start mask of the same file stem in ``start_mask_dir`` (as ``key``).

    ``start_mask_dir=None`` returns the items unchanged. Raises ``FileNotFoundError`` naming the folder, or
    ``ValueError`` naming every image without a mask (before any network runs).
    """
    items = [dict(item) for item in items]
    if start_mask_dir is None:
        return items
    folder = Path(start_mask_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: start mask folder not found (--start_mask_dir).")
    masks = image_files(folder)
    missing = [item["image"] for item in items if file_stem(item["image"]) not in masks]
    if missing:
        shown = ", ".join(str(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            f"{folder}: no start mask for {len(missing)} image(s): {shown}. Give every image a mask with the same "
            "file stem (e.g. images/case1.jpg -> masks/case1.png)."
        )
    for item in items:
        item[key] = str(masks[file_stem(item["image"])])
    return items


class StartMaskFromLabeld(MapTransform):
    """Append an image's existing label to it as the start mask channel: ``(C, H, W)`` → ``(C + 1, H, W)``.

    Place it after the intensity scaling and before any resizing (the label must match the loaded image's size;
    resizing then treats the mask like an image channel, and the inferer binarizes it at 0.5). Pair it with
    ``IterativeRefinementInferer(start_mask="last_channel")`` switched by the same ``enabled`` flag.

    The label is ``data[label_key]``: a path (any mask the bundle reads: gray, 0/1 or 0/255, RGB(A), palette), or a
    channel-first array/tensor. Without one and with ``datastore_lookup``, the image's saved label in MONAI Label's
    local datastore is used (:func:`datastore_label`). Masks are binarized like training labels
    (:class:`~fanet_monai.data.transforms.BinarizeLabeld`).

    Args:
        keys: the image key(s).
        label_key: key of the existing label (MONAI Label puts an uploaded label under ``"label"``).
        enabled: the switch (bool or ``"true"``/``"false"``); ``False`` passes the data through unchanged.
        datastore_lookup: look for ``labels/final/<image stem>.*`` next to the image when no label is given.
        keep: keep the annotator's work: append **two** channels, the label codes and the reviewed mask
            (:func:`annotator_label`), for ``IterativeRefinementInferer(start_mask="annotator_channels")``, which
            keeps every reviewed pixel's label at every pass; ``False``: one binarized channel, the start only.
        unreviewed_value: with ``keep``, the label value meaning "not reviewed yet" (:func:`as_unreviewed_value`);
            ``None``: only the drawn foreground counts as reviewed.
        num_classes: with ``keep``, 1 (binary) or K: the codes are kept as class codes 0..K.

    Raises:
        ValueError: naming the image when no label can be found, or naming the label file when its size differs
            from the image's.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        enabled: bool | str = True,
        datastore_lookup: bool = True,
        allow_missing_keys: bool = False,
        keep: bool | str = False,
        unreviewed_value: Any = None,
        num_classes: int = 1,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.enabled = as_flag(enabled)
        self.datastore_lookup = bool(datastore_lookup)
        self.keep = as_flag(keep)
        self.unreviewed_value = as_unreviewed_value(unreviewed_value)
        self.num_classes = int(num_classes)
        self._loader = LoadImage(reader=BitmapReader(), image_only=True, ensure_channel_first=True, dtype=None)
        self._binarize = BinarizeLabeld(keys="mask")

    def _label_for(self, data: Mapping[Hashable, Any], image: torch.Tensor, image_name: str) -> tuple[Any, str]:
        label = data.get(self.label_key)
        if label is None and self.datastore_lookup and image_name:
            found = datastore_label(image_name)
            label = None if found is None else str(found)
        if label is None:
            raise RequestError(
                f"{os.path.basename(image_name) or 'image'}: refine-my-mask needs the image's existing label, but "
                "none was given (upload one with the request as 'label', or save a label for the image first: "
                f"{DATASTORE_LABELS}/<image id>.png), or switch refine_existing_label off.", 404
            )
        if isinstance(label, (str, os.PathLike)):
            path = str(label)
            if not os.path.isfile(path):
                raise RequestError(f"{path}: start mask file not found (label of {image_name or 'the image'}).", 404)
            try:
                return self._loader(path), path
            except Exception as err:  # unreadable / not an image
                name = os.path.basename(path)
                raise RequestError(f"{name}: cannot read the start mask as an image ({err}).") from err
        source = label.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(label, MetaTensor) else None
        array = label if isinstance(label, torch.Tensor) else torch.as_tensor(np.asarray(label))
        if array.ndim == image.ndim - 1:  # (H, W) without a channel
            array = array[None]
        return array, str(source) if source else f"the '{self.label_key}' array"

    def _labels(self, d: dict) -> Iterator[tuple[Hashable, Any, str, Any, str]]:
        """``(key, image, image name, label, label source)`` for every image key of ``d``."""
        for key in self.key_iterator(d):
            image = d[key]
            name = str(image.meta.get(ImageMetaKey.FILENAME_OR_OBJ, "")) if isinstance(image, MetaTensor) else ""
            yield (key, image, name, *self._label_for(d, image, name))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        for key, image, name, label, source in self._labels(d):
            if self.keep:
                mask = annotator_label(label, self.num_classes, self.unreviewed_value)
            else:
                mask = self._binarize({"mask": label})["mask"]
            mask = mask.as_tensor() if isinstance(mask, MetaTensor) else torch.as_tensor(mask)
            if tuple(mask.shape[1:]) != tuple(image.shape[1:]):
                raise RequestError(
                    f"{source}: start mask size {tuple(mask.shape[1:])} differs from the image's "
                    f"{tuple(image.shape[1:])}" + (f" ({name})" if name else "") + "; the label must be drawn on "
                    "this image at its full size."
                )
            plain = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
            stacked = torch.cat([plain, mask.to(device=plain.device, dtype=plain.dtype)], dim=0)
            if isinstance(image, MetaTensor):
                stacked = MetaTensor(stacked, meta=image.meta, applied_operations=image.applied_operations)
            d[key] = stacked
        return d


class LoadStartLabeld(StartMaskFromLabeld):
    """Load the existing label of refine-my-mask (a path, an array, or the datastore's label; see
    :class:`StartMaskFromLabeld`) into ``data[label_key]`` as a channel-first tensor with its own meta (an array
    gets the image's affine), right after the image is loaded.

    The spatial preprocessing that follows then moves it with the image: the volume steps (orientation, spacing with
    nearest interpolation, foreground crop: keys ``image`` and ``label``) bring it into the image's preprocessed
    frame, where :class:`StartMaskFromLabeld` appends it. 2-D preprocessing does not touch the label, so bitmaps behave
    as before. With ``keep``, the annotator's ``[codes, reviewed]`` (:func:`annotator_label`) on the input's own grid
    also go to ``data["annotator_label"]``, untouched by the preprocessing, for :class:`KeepAnnotatorLabeld`. Does
    nothing when not ``enabled``."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        for _, image, name, label, source in self._labels(d):
            if not isinstance(label, MetaTensor):
                affine = image.affine if isinstance(image, MetaTensor) else None
                label = MetaTensor(label, affine=affine)
            if self.keep:
                if tuple(label.shape[1:]) != tuple(image.shape[1:]):
                    raise RequestError(
                        f"{source}: label size {tuple(label.shape[1:])} differs from the image's "
                        f"{tuple(image.shape[1:])}" + (f" ({name})" if name else "") + "; the label must be drawn "
                        "on this image at its full size."
                    )
                d[ANNOTATOR_KEY] = annotator_label(label.as_tensor(), self.num_classes, self.unreviewed_value)
            d[self.label_key] = label
        return d


class KeepAnnotatorLabeld(MapTransform):
    """The final guarantee of refine-my-mask with ``keep``: every pixel the annotator reviewed holds their label in
    the result, on the input's own grid, whatever resizing, resampling or speck removal did in between.

    Place it after the prediction is back on the input's grid and discretized (label codes ``(1, *spatial)``:
    0/1 or 0..K), before the codes are mapped to file values. ``data["annotator_label"]`` is
    :class:`LoadStartLabeld`'s ``[codes, reviewed]``; without it (refine-my-mask off) this does nothing.

    ``margin`` (local refinement, the ``refine_margin`` setting): also every pixel farther than ``margin`` pixels of
    this grid from all reviewed pixels gets the label as the annotator sent it
    (:meth:`~fanet_monai.inferers.review.AnnotatorConstraint.within`, which the passes apply on the network's grid).
    """

    def __init__(self, keys: KeysCollection = "pred", label_key: str = ANNOTATOR_KEY, margin: Any = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.margin = check_refine_margin(margin)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        kept = d.get(self.label_key)
        if kept is None:
            return d
        kept = torch.as_tensor(kept)
        for key in self.key_iterator(d):
            pred = d[key]
            if tuple(pred.shape[1:]) != tuple(kept.shape[1:]):
                raise ValueError(
                    f"the prediction {tuple(pred.shape[1:])} is not on the annotator's label grid "
                    f"{tuple(kept.shape[1:])}: KeepAnnotatorLabeld must follow Invertd."
                )
            codes = kept[:1].to(device=pred.device, dtype=pred.dtype)
            reviewed = kept[1:2].to(pred.device) > 0.5
            fixed = AnnotatorConstraint(codes[None], reviewed[None]).within(self.margin).reviewed[0]
            d[key] = torch.where(fixed, codes, pred)
        return d
