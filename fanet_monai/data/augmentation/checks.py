"""Checking that an augmentation keeps the feedback masks aligned with the images (``train.json`` runs it first)."""

from __future__ import annotations

from typing import Any, List, Sequence

from monai.transforms import Compose, InvertibleTransform

from fanet_monai.data.augmentation.warps import RandWarpd

__all__ = ["check_feedback_augmentation"]


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
    flat = (transforms if isinstance(transforms, Compose) else Compose(list(transforms))).flatten().transforms
    for transform in flat:
        keys = list(getattr(transform, "keys", ()) or ())
        name = type(transform).__name__
        if mask_key in keys and not isinstance(transform, InvertibleTransform):
            raise ValueError(
                f"{name} moves the feedback mask {mask_key!r} but is not invertible: the feedback handler could not "
                f"map predictions back through it (MONAI's Compose.inverse skips it silently). Use an invertible "
                f"equivalent from fanet_monai.data.augmentation (RandElasticd, RandGridDistortd, RandOpticalDistortd) "
                f"or drop it."
            )
        if image_key in keys and mask_key not in keys and _is_spatial(transform):
            raise ValueError(
                f"{name} moves the image {image_key!r} but not the feedback mask {mask_key!r}: list {mask_key!r} in its "
                f"keys (nearest interpolation) so the mask stays aligned with the image."
            )
    return list(flat) if isinstance(transforms, Compose) else list(transforms)
