"""MONAI Label glue that lives in the bundle's ``post_transforms`` (MONAI Label reads them before
``postprocessing``; other runners never see them).

MONAI Label's result writer picks the mask file's format from the data dictionary's ``result_extension``, else from
the input image's extension: a JPEG study would come back as a lossy JPEG mask whose 0/1 values JPEG compression
smears. :class:`LosslessResultd` asks for PNG for lossy inputs unless the request chose a format itself.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import Transform

__all__ = ["LOSSY_SUFFIXES", "LosslessResultd"]

#: Image suffixes whose compression would alter a label mask's values.
LOSSY_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".jpe", ".jfif", ".webp")


class LosslessResultd(Transform):
    """Set ``data["result_extension"]`` to ``extension`` (PNG) when ``data["image_path"]`` is a lossy format
    and the request did not set ``result_extension``; other data passes through unchanged."""

    def __init__(self, extension: str = ".png", path_key: str = "image_path", result_key: str = "result_extension"):
        self.extension = extension
        self.path_key = path_key
        self.result_key = result_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        path = d.get(self.path_key)
        if not d.get(self.result_key) and isinstance(path, str) and path.lower().endswith(LOSSY_SUFFIXES):
            d[self.result_key] = self.extension
        return d
