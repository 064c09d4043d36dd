"""MONAI Label glue: clear request errors, and the lossless result format.

MONAI Label turns any exception raised while it serves a request into a bare "500 Internal Server Error";
only FastAPI's ``HTTPException`` reaches the client with its message. :class:`RequestError` is a ``ValueError``
(what the bundle raises everywhere else) that is also an ``HTTPException`` when FastAPI is installed, and
:class:`CheckImageRequestd`, the first pre-transform of ``inference.json``, rejects a missing image (an unknown
image id), an unreadable upload and a non-image file with such an error before any work is spent.

MONAI Label's result writer picks the mask file's format from the data dictionary's ``result_extension``, else from
the input image's extension: a JPEG study would come back as a lossy JPEG mask whose 0/1 values JPEG compression
smears. :class:`LosslessResultd` asks for PNG for lossy inputs unless the request chose a format itself.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import MapTransform, Transform
from PIL import Image

__all__ = ["LOSSY_SUFFIXES", "LosslessResultd", "RequestError", "CheckImageRequestd"]

try:  # present in MONAI Label's environment
    from fastapi import HTTPException as _HTTPException
except ImportError:  # pragma: no cover - plain ValueError elsewhere
    _HTTPException = None

if _HTTPException is not None:

    class RequestError(ValueError, _HTTPException):
        """A bad request: a ``ValueError``, and an HTTP error with ``status_code`` and the message as detail."""

        def __init__(self, message: str, status_code: int = 400) -> None:
            ValueError.__init__(self, message)
            _HTTPException.__init__(self, status_code=status_code, detail=message)

        def __str__(self) -> str:
            return str(self.detail)

else:

    class RequestError(ValueError):  # type: ignore[no-redef]
        """A bad request (a ``ValueError`` carrying an HTTP ``status_code``)."""

        def __init__(self, message: str, status_code: int = 400) -> None:
            super().__init__(message)
            self.status_code = status_code
            self.detail = message


#: Suffixes MONAI readers handle that PIL cannot verify (checked for existence only).
_NON_BITMAP = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm")


class CheckImageRequestd(MapTransform):
    """Fail fast, with a :class:`RequestError` naming the problem, when ``data[key]`` is not a readable image path:
    an empty path (MONAI Label's lookup of an unknown image id), a missing file, a file that is not an image
    (e.g. ``.txt``), or a corrupt bitmap (PIL cannot verify it). Non-path data (arrays) passes through."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, (str, os.PathLike)):
                continue
            path = os.fspath(path)
            if not path or not os.path.isfile(path):
                shown = f"'{path}'" if path else "the request"
                raise RequestError(
                    f"image not found: {shown} names no image file (unknown image id in the datastore, or an empty "
                    "upload); list the studies with GET /datastore/ or upload the image as 'file'.", 404
                )
            name = os.path.basename(path)
            if path.lower().endswith(_NON_BITMAP):
                continue
            try:
                with Image.open(path) as image:
                    image.verify()
            except Exception as err:
                raise RequestError(
                    f"{name}: not a readable 2-D image ({type(err).__name__}: {err}); send a PNG, JPEG, TIFF, BMP or "
                    "GIF image.", 400
                ) from err
        return d

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
