"""Image-only datalists for inference, and the mask file format that matches the input images."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Dict, List

from monai.data import load_decathlon_datalist

from fanet_monai.data.files import IMAGE_SUFFIXES, NIFTI_SUFFIXES, image_files

__all__ = ["image_datalist", "mask_output_ext"]


def image_datalist(source: str | os.PathLike, key: str = "test", images: str = "images") -> List[Dict[str, str]]:
    """``[{"image": path}, ...]`` of the images to segment.

    Args:
        source: a folder (its ``images`` subfolder if there is one, else the folder itself; every file with a
            suffix of :data:`~fanet_monai.data.IMAGE_SUFFIXES`, sorted by name) or a MONAI datalist JSON file.
        key: list of the datalist JSON to read (``"test"``: a list of paths or of ``{"image": path}`` dicts).
        images: name of the image subfolder.

    Raises:
        ValueError: ``source`` is neither a folder nor a file, or the folder holds no image.
    """
    path = Path(source)
    if path.is_dir():
        folder = path / images if (path / images).is_dir() else path
        files = image_files(folder)
        if not files:
            raise ValueError(f"{folder}: no images found (suffixes {', '.join(IMAGE_SUFFIXES)}).")
        return [{"image": str(files[stem])} for stem in sorted(files)]
    if not path.is_file():
        raise ValueError(f"{path}: neither an image folder nor a datalist JSON file.")
    return load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key)


def mask_output_ext(items: Sequence[Mapping[str, str] | str], key: str = "image") -> str:
    """File suffix of the predicted masks: the inputs' own volume format (``".nii.gz"`` for NIfTI, ``".nrrd"``,
    ``".mha"``), ``".png"`` for 2-D bitmaps.

    Args:
        items: datalist entries (``{key: path}``) or paths.
        key: the image key of dict entries.

    Raises:
        ValueError: the list mixes formats (override the bundle's ``output_ext`` then).
    """
    names = [str(item[key] if isinstance(item, Mapping) else item).lower() for item in items]
    formats = {".nii.gz" if name.endswith(NIFTI_SUFFIXES) else next(
        (s for s in (".nrrd", ".mha") if name.endswith(s)), ".png") for name in names}
    if len(formats) > 1:
        raise ValueError(f"the images mix formats ({', '.join(sorted(formats))}); set the output format explicitly "
                         "(output_ext).")
    return formats.pop() if formats else ".png"
