"""The report of a volume data check (:func:`fanet_monai.data.volumes.check_volume_items`): what was learned about
each item, and one screen of counts, shape and spacing ranges, dtypes, classes per label, memory, notes, problems."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from fanet_monai.data.inputs import inference_bytes

__all__ = ["VolumeInfo", "VolumeReport"]


@dataclass
class VolumeInfo:
    """What the check learned about one item: image shape ``(X, Y, Z)``, channels, spacing (mm), dtypes and the
    class codes of its label (empty for an image without label)."""

    image: str
    shape: tuple[int, ...]
    channels: int
    spacing: tuple[float, ...]
    image_dtype: str
    label_dtype: str = ""
    classes: tuple[int, ...] = ()


@dataclass
class VolumeReport:
    """Summary of a checked volume dataset: counts per split, shapes, spacings, dtypes, classes, notes, problems
    (problems stay empty unless the check ran with ``strict=False``)."""

    splits: dict[str, list[VolumeInfo]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    title: str = "volumes"
    summary: str = ""

    @property
    def counts(self) -> dict[str, int]:
        return {name: len(items) for name, items in self.splits.items()}

    def unique(self) -> list[VolumeInfo]:
        """Each distinct image once (an item in two splits counts once)."""
        return list({info.image: info for items in self.splits.values() for info in items}.values())

    def text(self) -> str:
        """One screen: counts, shape and spacing ranges (median spacing), channels, dtypes, classes per label, the
        largest volume's memory estimate, notes, problems."""
        lines = [f"== {self.title} =="] + ([self.summary] if self.summary else [])
        lines.append("counts: " + ", ".join(f"{name} {n}" for name, n in self.counts.items()))
        infos = self.unique()
        if infos:
            lines += _geometry_lines(infos) + _label_lines(infos) + [_memory_line(infos)]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"problem: {p}" for p in self.problems] or ["problems: none"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def _counted(values: Iterable) -> str:
    return ", ".join(f"{value} ×{n}" for value, n in Counter(values).most_common())


def _geometry_lines(infos: list[VolumeInfo]) -> list[str]:
    shapes = np.array([info.shape for info in infos])  # (N, 3)
    spacing = np.array([info.spacing for info in infos])  # (N, 3)
    ranges = " x ".join(f"{lo}-{hi}" for lo, hi in zip(shapes.min(0), shapes.max(0)))
    spacings = " x ".join(f"{lo:.3g}-{hi:.3g}" for lo, hi in zip(spacing.min(0), spacing.max(0)))
    return [(f"shapes (x y z): {ranges} ({len({tuple(s) for s in shapes})} distinct); channels: "
            f"{_counted(i.channels for i in infos)}"),
            f"spacing (mm): {spacings}; median " + " x ".join(f"{v:.3g}" for v in np.median(spacing, 0)),
            f"image dtypes: {_counted(i.image_dtype for i in infos)}"]


def _label_lines(infos: list[VolumeInfo]) -> list[str]:
    labelled = [i for i in infos if i.label_dtype]
    if not labelled:
        return []
    return [f"label dtypes: {_counted(i.label_dtype for i in labelled)}",
            "classes per label: " + _counted("{" + ",".join(map(str, i.classes)) + "}" for i in labelled)]


def _memory_line(infos: list[VolumeInfo]) -> str:
    largest = max(infos, key=lambda i: int(np.prod(i.shape)) * i.channels)
    need = inference_bytes(largest.shape, largest.channels)
    amount = f"{need / 2**30:.1f} GiB" if need >= 2**30 else f"{need / 2**20:.0f} MiB"
    return (f"memory: the largest volume ({'x'.join(map(str, largest.shape))}, {largest.channels} channel"
            f"{'s' if largest.channels > 1 else ''}) needs about {amount} to refine")
