"""Finding a dataset's files in its native layout: folders by name at any depth, images paired with masks by
stem, name lists (``train.txt``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

from fanet_monai.data.files import DataCheckError, file_stem, natural_key, raise_problems

__all__ = ["child_folder", "find_folder_pair", "pair_by_stem", "read_name_list", "walk_dirs"]


def pair_by_stem(
    images: Dict[str, Path], masks: Dict[str, Path], mask_stem: Callable[[str], str], image_dir: Path, mask_dir: Path
) -> List[Dict[str, str]]:
    """Pair images with masks (mask stem = ``mask_stem(image stem)``); every unmatched file is an error."""
    errors = []
    by_mask = {mask_stem(stem): stem for stem in images}
    for stem, path in images.items():
        if mask_stem(stem) not in masks:
            errors.append(f"{path}: image has no mask in {mask_dir} (expected a file with stem {mask_stem(stem)!r}).")
    for stem, path in masks.items():
        if stem not in by_mask:
            errors.append(f"{path}: mask has no image in {image_dir}.")
    raise_problems(errors)
    return [{"image": str(images[s].absolute()), "label": str(masks[mask_stem(s)].absolute())} for s in images]


def walk_dirs(root: Path, depth: int = 3) -> Iterable[Path]:
    """``root`` and its sub-folders down to ``depth`` levels, breadth first, in natural order."""
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            yield folder
            try:
                nxt += sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                              key=lambda p: natural_key(p.name))
            except OSError:
                continue
        level = nxt


def child_folder(folder: Path, names: Sequence[str]) -> Path | None:
    """The sub-folder of ``folder`` whose name is one of ``names`` (case- and separator-insensitive)."""
    wanted = {re.sub(r"[\s_-]", "", n.lower()) for n in names}
    try:
        for path in sorted(folder.iterdir()):
            if path.is_dir() and re.sub(r"[\s_-]", "", path.name.lower()) in wanted:
                return path
    except OSError:
        return None
    return None


def find_folder_pair(root: Path, first: Sequence[str], second: Sequence[str], what: str) -> Tuple[Path, Path]:
    """The first folder under ``root`` (breadth first) holding sub-folders named ``first`` and ``second``."""
    for folder in walk_dirs(root):
        a, b = child_folder(folder, first), child_folder(folder, second)
        if a is not None and b is not None:
            return a, b
    raise DataCheckError(
        f"{root}: no {what} found (looked for a folder holding {first[0]!r} and {second[0]!r} sub-folders)."
    )


def read_name_list(path: Path, stems: Dict[str, Path], images_dir: Path) -> List[str]:
    """Stems of the file names listed in ``path`` (one per line), each checked against ``stems``."""
    names = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        stem = file_stem(name)
        if stem not in stems:
            raise DataCheckError(f"{path}:{number}: {name!r} has no image in {images_dir}.")
        names.append(stem)
    return names
