"""Which bundle configs a ``fanet`` command runs, and their raw content (ids and defaults, nothing evaluated)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from monai.bundle import ConfigParser

from fanet_monai.bundle import bundle_configs

__all__ = ["DATA_LAYERS", "bundle_command", "config_files", "config_ids", "data_layers", "holds_volumes",
           "raw_config"]

#: bundle configs laid over a command's own configs for a kind of data: ``volume.json`` for 3-D volumes (the 3-D
#: FANet in patch mode, one image channel, volume preprocessing and checks)
DATA_LAYERS = ("volume",)


def bundle_command(*configs: str) -> Callable:
    """Mark a :class:`~fanet_monai.cli.commands.FanetCLI` method as running the bundle configs ``configs`` (names
    under ``bundle/configs``): its ``**overrides`` are then checked against, and its help lists, the config ids of
    those files."""

    def mark(method: Callable) -> Callable:
        method.bundle_configs = tuple(configs)
        return method

    return mark


def config_files(names: Sequence[str], bundle_dir: str | None = None) -> list[str]:
    """Paths of the bundle configs ``names`` (``bundle_dir`` or the package's own ``bundle/configs``)."""
    return bundle_configs(*names, bundle_dir=bundle_dir)


@functools.lru_cache(maxsize=None)
def raw_config(names: tuple[str, ...], bundle_dir: str | None = None) -> dict[str, Any]:
    """The raw merged content of the bundle configs ``names`` (MONAI ``ConfigParser``, nothing evaluated)."""
    parser = ConfigParser()
    parser.read_config(config_files(names, bundle_dir))
    return parser.get() or {}


def config_ids(names: Sequence[str], bundle_dir: str | None = None) -> set[str]:
    """The top-level ids of the configs ``names`` (``imports`` and ``_meta_``-like private ids left out)."""
    return {k for k in raw_config(tuple(names), bundle_dir) if not k.startswith("_")}


def holds_volumes(dataset: str | os.PathLike) -> bool:
    """Whether ``dataset`` (a dataset folder, a folder of images, or a datalist JSON) holds 3-D volumes: a volume
    folder (:func:`fanet_monai.data.volumes.is_volume_folder`), a folder whose files are 3-D volumes, or a datalist
    whose first item is one. Reads one header at most."""
    from fanet_monai.data.volume_headers import is_volume_file, read_volume_header
    from fanet_monai.data.volumes import is_volume_folder

    path = Path(dataset)
    if path.is_dir():
        if is_volume_folder(path):
            return True
        folder = path / "images" if (path / "images").is_dir() else path
        first = next((f for f in sorted(folder.iterdir()) if f.is_file() and is_volume_file(f)), None)
    elif path.suffix == ".json" and path.is_file():
        try:
            content = json.loads(path.read_text())
            item = next(iter(next(v for v in content.values() if isinstance(v, list) and v)), None)
        except (ValueError, StopIteration, OSError):
            return False
        image = item.get("image") if isinstance(item, dict) else item
        first = None if not isinstance(image, str) else (path.parent / image if not os.path.isabs(image) else
                                                         Path(image))
        first = first if first is not None and is_volume_file(first) else None
    else:
        first = path if path.is_file() and is_volume_file(path) else None
    if first is None:
        return False
    try:
        dims = read_volume_header(first).dims
    except Exception:  # noqa: BLE001 - unreadable: the data checks name it
        return True
    return len(dims) == 3 and min(dims) > 4


def data_layers(dataset: str | os.PathLike | None, settings: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The :data:`DATA_LAYERS` a command runs: those a run recorded (``settings["config_layers"]``, so evaluation
    and inference of a 3-D run stay 3-D whatever they are given), else ``("volume",)`` when ``dataset`` holds
    volumes (:func:`holds_volumes`)."""
    if settings and "config_layers" in settings:
        return tuple(name for name in settings["config_layers"] if name in DATA_LAYERS)
    return ("volume",) if dataset is not None and holds_volumes(dataset) else ()
