"""``prepare msd``: a Medical Segmentation Decathlon task folder → a checked MONAI datalist JSON that also carries
the task's label names, modality and channel count.

``DIR/dataset.json`` (``name``, ``modality`` ``{"0": "MRI"}``, ``labels`` ``{"0": "background", "1": ...}``,
``training`` ``[{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]``, ``test``
``["./imagesTs/y.nii.gz"]``) is read with MONAI's Decathlon loader (paths resolved against ``DIR``; macOS ``._*``
entries dropped), every listed file is checked (:func:`fanet_monai.data.volumes.check_volume_items` with the task's
classes and channels) and only then is ``OUT.json`` written (atomically): ``training`` and ``validation`` (held out
of the Decathlon training list: ``val_fraction`` or ``val_from_train``, seeded), ``test`` (the Decathlon's unlabelled
test images), plus ``labels``, ``modality``, ``num_classes`` and ``image_channels`` for the bundle to read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai.data import load_decathlon_datalist

from fanet_monai.data.discovery import walk_dirs
from fanet_monai.data.files import DataCheckError, raise_problems
from fanet_monai.data.splits import cut_items, describe_split, hold_out
from fanet_monai.data.volumes import VolumeReport, check_volume_items
from fanet_monai.errors import InputError
from fanet_monai.io import write_json

__all__ = ["VOLUME_LAYOUTS", "declared_settings", "msd_properties", "prepare_msd"]

#: ``prepare`` layouts of volume datasets (the 2-D ones are :data:`fanet_monai.data.layouts.LAYOUTS`)
VOLUME_LAYOUTS = ("msd",)


def _dataset_json(root: Path) -> Path:
    """``root/dataset.json``, or the first one in the folders below ``root`` (two levels)."""
    found = next((d / "dataset.json" for d in walk_dirs(root, 2) if (d / "dataset.json").is_file()), None)
    if found is None:
        raise DataCheckError(f"{root / 'dataset.json'}: not found; a Decathlon task folder holds dataset.json, "
                             "imagesTr/ and labelsTr/ (give that folder, or one above it).")
    return found


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataCheckError(f"{path}: not a readable dataset.json ({error}); restore it from the download.") from error
    if not isinstance(content, dict) or not isinstance(content.get("training"), list):
        raise DataCheckError(f"{path}: no 'training' list; a Decathlon dataset.json lists its training cases there.")
    return content


def _properties(content: dict, path: Path) -> dict:
    labels = content.get("labels") or {}
    try:
        codes = sorted(int(code) for code in labels)
    except (TypeError, ValueError):
        codes = []
    if len(codes) < 2 or codes != list(range(len(codes))):
        raise DataCheckError(f"{path}: 'labels' {labels} are not the class codes 0..K with names (e.g. "
                             '{"0": "background", "1": "tumour"}); fix dataset.json.')
    modality = content.get("modality") or {"0": "unknown"}
    return {"name": content.get("name", path.parent.name), "labels": {str(c): labels[str(c)] for c in codes},
            "modality": {str(k): v for k, v in modality.items()}, "num_classes": codes[-1],
            "image_channels": len(modality)}


def msd_properties(path: str | os.PathLike) -> dict:
    """``name``, ``labels`` (``{code: name}``, codes as strings as in the file), ``modality`` (``{index: name}``),
    ``num_classes`` (the largest label code K) and ``image_channels`` (the modality count; 1 when absent) of a
    Decathlon ``dataset.json`` (or of a datalist written by :func:`prepare_msd`, which keeps these keys).

    Raises:
        DataCheckError: naming the file: not JSON, no ``training`` list, labels that are not the codes 0..K.
    """
    return _properties(_read_json(Path(path)), Path(path))


#: Decathlon modality names that are MR sequences (intensity: z-score on the foreground)
MR_SEQUENCES = frozenset({"MR", "MRI", "T1", "T1W", "T1GD", "T2", "T2W", "FLAIR", "ADC", "DWI", "PD"})


def declared_settings(path: str | os.PathLike) -> dict:
    """The run settings a datalist declares (one written by :func:`prepare_msd`, or a Decathlon ``dataset.json``):
    ``num_classes``, ``image_channels``, ``label_names`` (``{code: name}`` without the background) and, for a
    CT or all-MR modalities, ``modality`` ("CT"/"MR", :mod:`fanet_monai.data.volume_preprocessing`). ``{}`` for
    anything else (a folder, a datalist without ``labels``)."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() != ".json":
        return {}
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # the datalist loader names the file
    if not isinstance(content, dict) or "labels" not in content:
        return {}
    properties = _properties(content, path)
    settings = {"num_classes": properties["num_classes"], "image_channels": properties["image_channels"],
                "label_names": {k: v for k, v in properties["labels"].items() if k != "0"}}
    kinds = {str(v).upper() for v in properties["modality"].values()}
    if kinds == {"CT"}:
        settings["modality"] = "CT"
    elif kinds <= MR_SEQUENCES:
        settings["modality"] = "MR"
    return settings


def _listed(path: Path, content: dict, key: str) -> tuple[list[dict], int]:
    """The ``key`` list with absolute paths, without macOS ``._*`` entries; and how many of those were dropped."""
    if not content.get(key):
        return [], 0
    items = load_decathlon_datalist(str(path), True, key, base_dir=str(path.parent))
    kept = [i for i in items if not any(os.path.basename(str(v)).startswith("._") for v in i.values())]
    return kept, len(items) - len(kept)


def _missing(items: list[dict], path: Path, key: str) -> list[str]:
    return [f"{value}: file not found (listed in {path} '{key}'); restore it or remove the entry."
            for item in items for value in item.values() if not os.path.isfile(value)]


def _split(items: list[dict], seed: int, order: str | None, val_fraction: float,
           val_from_train: int) -> tuple[dict[str, list[dict]], list[str]]:
    """``{"training", "validation"}`` held out of the Decathlon training list, and the note saying how."""
    if val_from_train:
        lists = {"training": list(items), "validation": []}
        return lists, hold_out(lists, int(val_from_train), seed)
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    n = len(items)
    val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    lists = cut_items(items, n - val, val, 0, False, order or "random", seed)
    return lists, [(f"{describe_split(lists, order or 'random', seed)}; validation held out of the Decathlon "
                   "training list, test = its (unlabelled) test list")]


def _summary(properties: dict, n_training: int, n_test: int) -> str:
    """``msd: 40 training cases, 0 test, modality MRI (1 channel), labels 1 Anterior, 2 Posterior``."""
    channels = properties["image_channels"]
    labels = ", ".join(f"{code} {name}" for code, name in properties["labels"].items() if code != "0")
    return (f"msd: {n_training} training cases, {n_test} test, modality {', '.join(properties['modality'].values())}"
            f" ({channels} channel{'s' if channels != 1 else ''}), labels {labels}")


def prepare_msd(
    root: str | os.PathLike,
    out_json: str | os.PathLike,
    seed: int = 0,
    split_order: str | None = None,
    val_from_train: int = 0,
    offline_copies: int | str = 0,
    val_fraction: float = 0.1,
    quiet: bool = False,
) -> VolumeReport:
    """Check a Decathlon task folder and write its datalist ``out_json`` (see the module doc).

    Args:
        root: the task folder (holding ``dataset.json``) or a folder above it.
        out_json: the datalist to write.
        seed, split_order: the seeded validation hold-out (``"random"``, or ``"contiguous"``: the last names).
        val_from_train: hold out this many training cases instead of ``val_fraction`` of them.
        offline_copies: must be 0 (offline augmented copies are for the 2-D layouts).
        val_fraction: fraction of the training cases held out as validation.
        quiet: do not print the report.

    Returns:
        the :class:`~fanet_monai.data.volumes.VolumeReport`; ``report.summary`` is the one-line summary.

    Raises:
        DataCheckError: naming the file: no ``dataset.json``, a listed file that is missing, every problem of
            :func:`~fanet_monai.data.volumes.check_volume_items`; nothing is written then.
    """
    if offline_copies not in (0, "0", None):
        raise InputError("offline_copies: offline augmented copies are for the 2-D layouts; volumes are augmented "
                         "on the fly while training.")
    root, out_json = Path(root).expanduser(), Path(out_json).expanduser().absolute()
    if not root.is_dir():
        raise DataCheckError(f"{root}: dataset folder not found.")
    path = _dataset_json(root)
    content = _read_json(path)
    properties = _properties(content, path)
    training, dropped = _listed(path, content, "training")
    test, dropped_test = _listed(path, content, "test")
    raise_problems(_missing(training, path, "training") + _missing(test, path, "test"))
    if not training:
        raise DataCheckError(f"{path}: the 'training' list is empty (no cases).")
    lists, notes = _split(training, seed, split_order, val_fraction, val_from_train)
    lists["test"] = test
    if dropped or dropped_test:
        notes.append(f"{dropped + dropped_test} macOS '._*' entries of dataset.json ignored")
    report = check_volume_items(lists, properties["num_classes"], properties["image_channels"],
                                title=f"msd: {path.parent}")
    report.summary = _summary(properties, len(training), len(test))
    report.notes = notes + report.notes
    content = {
        "name": properties["name"],
        "description": f"msd prepared by fanet_monai.data.decathlon.prepare_msd from {path}",
        "tensorImageSize": "3D",
        "modality": properties["modality"],
        "labels": properties["labels"],
        "num_classes": properties["num_classes"],
        "image_channels": properties["image_channels"],
        "seed": seed,
        "numTraining": len(lists["training"]),
        "numTest": len(test),
        **lists,
    }
    write_json(out_json, content)
    report.notes.append(f"datalist written to {out_json}")
    if not quiet:
        print(report.text())
    return report
