"""Which bundle configs a ``fanet`` command runs, and their raw content (ids and defaults, nothing evaluated)."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

from monai.bundle import ConfigParser

from fanet_monai.bundle import bundle_configs

__all__ = ["bundle_command", "config_files", "config_ids", "raw_config"]


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
