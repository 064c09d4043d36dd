"""Reading 2-D bitmaps the same way everywhere: in the bundle (``LoadImaged(reader=BitmapReader)``), in the data
checks and in ``prepare``.

MONAI's default readers leave gaps for the paper's datasets: ITK (which MONAI picks for ``.gif`` and ``.tif``) has no
GIF reader at all (DRIVE's manual annotations and FOV masks are GIFs), and PIL's mode conventions (palette images,
1-bit images, 16-bit PNGs as 32-bit ``"I"``) reach the array unconverted. :class:`BitmapReader` is MONAI's
``PILReader`` with more suffixes and one mode conversion, :func:`normalize_mode`:

- palette (``"P"``, e.g. GIF masks) → RGB, or RGBA when the palette has transparency (the colours, not the indices);
- 1-bit (``"1"``) → 8-bit 0/255;
- 16-bit (``"I;16"``, ``"I;16B"``, ``"I"`` with values ≤ 65535) → ``uint16``;
- CMYK / YCbCr / LAB → RGB; gray, gray+alpha, RGB, RGBA and 32-bit float stay as they are.

The native dtype is kept (load with ``dtype=None``) and recorded in ``meta["source_dtype"]``, so
:class:`~fanet_monai.data.transforms.ScaleToUnitd` can scale by the dtype's range (255 for 8-bit, 65535 for 16-bit).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from monai.data import ITKReader, PILReader
from monai.data.utils import is_supported_format
from monai.utils import ensure_tuple
from PIL import Image

from fanet_monai.data.files import BITMAP_SUFFIXES

__all__ = ["BitmapReader", "normalize_mode", "read_bitmap"]


def normalize_mode(image: Image.Image) -> Image.Image:
    """PIL image in one of the modes ``L``, ``LA``, ``RGB``, ``RGBA``, ``I;16`` (uint16) or ``F`` (see module doc)."""
    mode = image.mode
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode == "PA":
        return image.convert("RGBA")
    if mode == "1":
        return image.convert("L")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        array = np.asarray(image)
        return Image.fromarray(array.astype(np.uint16)) if array.dtype != np.uint16 else image
    if mode == "I":
        array = np.asarray(image)
        if array.size and array.min() >= 0 and array.max() <= 65535:
            return Image.fromarray(array.astype(np.uint16))
        return image
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    if mode == "La":
        return image.convert("LA")
    if mode == "RGBa":
        return image.convert("RGBA")
    return image


def read_bitmap(path: str | os.PathLike, frame: int = 0) -> np.ndarray:
    """Pixel array ``(H, W)`` or ``(H, W, C)`` (native dtype) of one frame of a bitmap, fully decoded.

    Raises what PIL raises for unreadable or truncated files (``OSError``, ``PIL.UnidentifiedImageError``,
    ``SyntaxError``, ``ValueError``); :mod:`fanet_monai.data.checks` turns that into a message naming the file.
    """
    with Image.open(path) as image:
        if frame:
            image.seek(frame)
        image.load()
        return np.asarray(normalize_mode(image)).copy()


class _ITKImage:
    """A TIFF that PIL could not decode, read by MONAI's ``ITKReader`` instead (e.g. 16-bit RGB)."""

    def __init__(self, reader, image):
        self.reader, self.image = reader, image


class BitmapReader(PILReader):
    """MONAI ``PILReader`` for ``png/jpg/jpeg/bmp/gif/tif/tiff`` with :func:`normalize_mode` as its converter, the
    stored dtype recorded as ``meta["source_dtype"]`` (MONAI turns uint16 into int32 tensors; this is how
    :class:`~fanet_monai.data.transforms.ScaleToUnitd` still knows a 16-bit image), and images decoded in ``read`` so a
    truncated file fails there. TIFFs PIL cannot decode (e.g. 16-bit RGB) fall back to MONAI's ``ITKReader``.
    Other files (NIfTI, ...) are left to MONAI's other readers.

    Use it as ``LoadImaged(keys, reader=BitmapReader, dtype=None, ensure_channel_first=True)``
    (``"reader": "fanet_monai.data.readers.BitmapReader"`` in a bundle config).

    Args:
        tiff: also read ``.tif``/``.tiff`` (default); ``False`` leaves them to ITK.
    """

    def __init__(self, tiff: bool = True, reverse_indexing: bool = True, **kwargs):
        super().__init__(converter=None, reverse_indexing=reverse_indexing, **kwargs)
        self.tiff = tiff

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        suffixes = [s.lstrip(".") for s in BITMAP_SUFFIXES if self.tiff or not s.startswith(".tif")]
        return is_supported_format(filename, suffixes)

    def read(self, data, **kwargs):
        names = ensure_tuple(data)
        options = {**self.kwargs, **kwargs}
        images = []
        for name in names:
            try:
                image = Image.open(name, **options)
                image.load()
                images.append(normalize_mode(image))
            except Exception:
                if Path(name).suffix.lower() not in (".tif", ".tiff"):
                    raise
                reader = ITKReader(reverse_indexing=self.reverse_indexing)
                images.append(_ITKImage(reader, reader.read(name)))
        return images if len(names) > 1 else images[0]

    def get_data(self, img):
        items = img if isinstance(img, (list, tuple)) else [img]
        fallback = [i for i in items if isinstance(i, _ITKImage)]
        if fallback:
            if len(items) > 1:
                raise ValueError("BitmapReader: cannot stack a TIFF that needed ITK with other files.")
            array, meta = fallback[0].reader.get_data(fallback[0].image)
        else:
            array, meta = super().get_data(img)
        meta["source_dtype"] = str(np.asarray(array).dtype)
        return array, meta

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tiff={self.tiff})"
