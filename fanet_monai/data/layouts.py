"""``prepare``: a dataset in its native download layout → a checked MONAI datalist JSON with the paper's split.

``python -m fanet_monai prepare LAYOUT ROOT OUT.json`` (or :func:`prepare`) finds the files of one of the paper's
seven datasets (or a plain ``images/`` + ``masks/`` folder), pairs images with masks, splits them with the paper's
sizes (Table I) and a fixed seed, checks every file (:mod:`fanet_monai.data.checks`: errors name the file), prints a
one-screen report and only then writes ``OUT.json`` (atomically: a temporary file renamed into place). Files it has
to generate (merged DSB masks, EM slices from the multi-page TIFFs, offline augmented copies) go into folders next
to ``OUT.json`` — never into the dataset — and are moved into place only when every check passed.

Layouts (``ROOT`` may be the dataset folder or a folder above it):

============== ========================================================================= ======================
layout         native files                                                              split (paper, Table I)
============== ========================================================================= ======================
kvasir-seg     ``images/*.jpg`` + ``masks/*.jpg``; ``train.txt``/``val.txt`` honoured     880 / 120 (val = test)
cvc-clinicdb   ``Original/*.tif`` + ``Ground Truth/*.tif`` (or the PNG copies)             490 / 61 / 61
dsb2018        ``stage1_train/<id>/images/<id>.png`` + ``masks/*.png`` (union)             335 / rest / 134
isic2018       ``ISIC2018_Task1-2_Training_Input/*.jpg`` + ``..._GroundTruth/*_segmentation.png`` 1815 / rest / 259
em-isbi2012    ``train-volume.tif`` + ``train-labels.tif``, or ``images/NN.png`` + ``masks``  24 / 3 / 3 contiguous
drive          ``training|test/images/*.tif`` + ``1st_manual/*.gif`` + ``mask/*.gif`` (FOV) official 20 / 20 (val = test)
chase-db1      ``Image_XXL.jpg`` + ``Image_XXL_1stHO.png``                                 20 / 8 first/last (val = test)
folder         ``images/*`` + ``masks/*`` by stem                                          80 / 10 / 10 %
msd            Decathlon ``dataset.json`` + ``imagesTr/`` + ``labelsTr/`` (3-D volumes)    val_fraction held out
============== ========================================================================= ======================

``msd`` is a volume layout (:mod:`fanet_monai.data.decathlon`): its files are checked by the volume checks, its
datalist also keeps the task's labels, modality, ``num_classes`` and ``image_channels``.

"val = test": the paper reports no validation set for these; the validation list is the test list (as the
reference code does for Kvasir-SEG) unless ``val_from_train=N`` holds out N training images instead. "rest": the
images neither in the paper's training nor test count (DSB 201, ISIC 520). When a dataset has another number of
images than the paper's, the same proportions are used (and the report says so).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from fanet_monai.data.checks import DataReport, binarize_mask, check_items, read_array
from fanet_monai.data.decathlon import VOLUME_LAYOUTS, prepare_msd
from fanet_monai.data.discovery import child_folder, find_folder_pair, pair_by_stem, read_name_list, walk_dirs
from fanet_monai.data.expand import expand_offline
from fanet_monai.data.files import DataCheckError, file_stem, image_files, natural_key, raise_problems
from fanet_monai.data.readers import normalize_mode
from fanet_monai.data.splits import PAPER_SPLITS, cut_items, describe_split, hold_out, paper_split
from fanet_monai.data.staging import StagedFolders, write_png
from fanet_monai.data.volumes import VolumeReport
from fanet_monai.io import write_json
from fanet_monai.presets import preset_value

__all__ = ["LAYOUTS", "prepare"]

LAYOUTS = ("kvasir-seg", "cvc-clinicdb", "dsb2018", "isic2018", "em-isbi2012", "drive", "chase-db1", "folder")


def _kvasir(root: Path, stage: StagedFolders, seed: int, options: dict):
    images_dir, masks_dir = find_folder_pair(root, ["images"], ["masks"], "Kvasir-SEG images/ and masks/ folders")
    images, masks = image_files(images_dir, natural=True), image_files(masks_dir, natural=True)
    items = pair_by_stem(images, masks, lambda s: s, images_dir, masks_dir)
    folder = images_dir.parent
    lists_dir = next((d for d in (folder, root) if (d / "train.txt").is_file() and (d / "val.txt").is_file()), None)
    if lists_dir is None:
        return paper_split(items, PAPER_SPLITS["kvasir-seg"], seed, options.get("split_order"))
    by_stem = {file_stem(i["image"]): i for i in items}
    train = read_name_list(lists_dir / "train.txt", images, images_dir)
    test = read_name_list(lists_dir / "val.txt", images, images_dir)
    lists = {"training": [by_stem[s] for s in train], "validation": [by_stem[s] for s in test],
             "test": [by_stem[s] for s in test]}
    notes = [f"split from {lists_dir / 'train.txt'} and val.txt: {len(train)}/{len(test)} (paper: 880/120); "
             "validation list = test list (val.txt), as the reference code"]
    unused = len(items) - len(set(train) | set(test))
    if unused:
        notes.append(f"{unused} images are in neither train.txt nor val.txt and are left out")
    return lists, notes


def _cvc(root: Path, stage: StagedFolders, seed: int, options: dict):
    candidates = []
    for folder in walk_dirs(root):
        original = child_folder(folder, ["Original"])
        truth = child_folder(folder, ["Ground Truth", "GroundTruth"])
        if original is not None and truth is not None:
            candidates.append((original, truth))
    if not candidates:
        raise DataCheckError(f"{root}: no CVC-ClinicDB 'Original' and 'Ground Truth' folders found.")
    tif = [c for c in candidates if any(p.suffix.lower() in (".tif", ".tiff") for p in c[0].iterdir())]
    original, truth = (tif or candidates)[0]
    items = pair_by_stem(image_files(original, natural=True), image_files(truth, natural=True), lambda s: s, original, truth)
    return paper_split(items, PAPER_SPLITS["cvc-clinicdb"], seed, options.get("split_order"))


def _dsb(root: Path, stage: StagedFolders, seed: int, options: dict):
    train_dir = child_folder(root, ["stage1_train"])
    if train_dir is None:
        train_dir = next((d for d in walk_dirs(root, 2) if d.name.lower() == "stage1_train"), root)
    cases = [d for d in sorted(train_dir.iterdir(), key=lambda p: natural_key(p.name))
             if d.is_dir() and not d.name.startswith(".")]
    cases = [d for d in cases if (d / "images").is_dir() or (d / "masks").is_dir()]
    if not cases:
        raise DataCheckError(f"{train_dir}: no DSB 2018 cases found (expected <id>/images/<id>.png + <id>/masks/*.png).")
    out = stage.folder("dsb2018_masks")
    errors, items = [], []
    for case in cases:
        images = image_files(case / "images", natural=True) if (case / "images").is_dir() else {}
        if len(images) != 1:
            errors.append(f"{case / 'images'}: expected exactly one image, found {len(images)}.")
            continue
        image = next(iter(images.values()))
        mask_files = list(image_files(case / "masks", natural=True).values()) if (case / "masks").is_dir() else []
        if not mask_files:
            errors.append(f"{image}: image has no mask ({case / 'masks'} is missing or empty).")
            continue
        try:
            with Image.open(image) as handle:
                width, height = handle.size
        except Exception as error:  # noqa: BLE001
            errors.append(f"{image}: unreadable or truncated image ({type(error).__name__}: {error}).")
            continue
        union = np.zeros((height, width), bool)
        for mask_file in mask_files:
            try:
                mask = read_array(mask_file)
                if mask.shape[:2] != (height, width):
                    raise DataCheckError(f"{mask_file}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs "
                                         f"from its image {image} ({width}x{height}).")
                union |= binarize_mask(mask, mask_file)[0]
            except DataCheckError as error:
                errors.append(str(error))
        target = out / f"{file_stem(image.name)}.png"
        write_png(target, union.astype(np.uint8) * 255)
        items.append({"image": str(image.absolute()), "label": str(target)})
    raise_problems(errors)
    lists, notes = paper_split(items, PAPER_SPLITS["dsb2018"], seed, options.get("split_order"))
    return lists, notes + [f"masks: the per-nucleus masks of each case merged by union into "
                           f"{stage.out_dir / 'dsb2018_masks'}"]


def _isic(root: Path, stage: StagedFolders, seed: int, options: dict):
    def norm(path: Path) -> str:
        return path.name.lower().replace("-", "_")

    dirs = list(walk_dirs(root, 2))
    inputs = [d for d in dirs if "training_input" in norm(d)]
    truths = [d for d in dirs if "training_groundtruth" in norm(d) and "task1" in norm(d)]
    if not truths:
        truths = [d for d in dirs if "groundtruth" in norm(d) and "train" in norm(d)]
    if inputs and truths:
        input_dir, truth_dir = inputs[0], truths[0]
    else:
        flat = next((d for d in dirs if any(p.name.endswith("_segmentation.png") for p in d.iterdir())), None)
        if flat is None:
            raise DataCheckError(f"{root}: no ISIC 2018 Task 1 folders found (ISIC2018_Task1-2_Training_Input/ and "
                                 "ISIC2018_Task1_Training_GroundTruth/).")
        input_dir = truth_dir = flat
    all_images = image_files(input_dir, natural=True)
    images = {s: p for s, p in all_images.items() if not s.endswith(("_segmentation", "_superpixels"))}
    masks = {s: p for s, p in image_files(truth_dir, natural=True).items() if s.endswith("_segmentation")}
    items = pair_by_stem(images, masks, lambda s: f"{s}_segmentation", input_dir, truth_dir)
    lists, notes = paper_split(items, PAPER_SPLITS["isic2018"], seed, options.get("split_order"))
    return lists, notes + [f"images {input_dir}, masks {truth_dir} (the official validation/test inputs are not used)"]


def _em(root: Path, stage: StagedFolders, seed: int, options: dict):
    volume = next((d / "train-volume.tif" for d in walk_dirs(root, 2) if (d / "train-volume.tif").is_file()), None)
    notes = ["masks keep the ISBI polarity: 255 = cell interior (non-membrane), 0 = membrane"]
    if volume is not None:
        labels = volume.parent / "train-labels.tif"
        if not labels.is_file():
            raise DataCheckError(f"{volume}: image volume has no mask volume ({labels} not found).")
        out = stage.folder("em-isbi2012_slices")
        frames = {}
        for path in (volume, labels):
            try:
                with Image.open(path) as handle:
                    frames[path] = getattr(handle, "n_frames", 1)
                    for index in range(frames[path]):
                        handle.seek(index)
                        handle.load()
                        array = np.asarray(normalize_mode(handle))
                        folder = "images" if path == volume else "masks"
                        write_png(out / folder / f"{index:02d}.png", array)
            except DataCheckError:
                raise
            except Exception as error:  # noqa: BLE001
                raise DataCheckError(f"{path}: unreadable or truncated image ({type(error).__name__}: {error}).")
        if frames[volume] != frames[labels]:
            raise DataCheckError(f"{labels}: {frames[labels]} mask slices for {frames[volume]} image slices in {volume}.")
        images_dir, masks_dir = out / "images", out / "masks"
        notes.append(f"{frames[volume]} slices of {volume.name} / {labels.name} written to "
                     f"{stage.out_dir / 'em-isbi2012_slices'}")
    else:
        try:
            images_dir, masks_dir = find_folder_pair(root, ["images", "image"], ["masks", "label", "labels"], "EM slices")
        except DataCheckError:
            raise DataCheckError(f"{root}: no train-volume.tif + train-labels.tif and no images/ + masks/ slice "
                                 "folders found (ISBI 2012 EM).") from None
    items = pair_by_stem(image_files(images_dir, natural=True), image_files(masks_dir, natural=True), lambda s: s, images_dir, masks_dir)
    lists, split_notes = paper_split(items, PAPER_SPLITS["em-isbi2012"], seed, options.get("split_order"))
    return lists, split_notes + notes


def _drive(root: Path, stage: StagedFolders, seed: int, options: dict):
    training, test = find_folder_pair(root, ["training"], ["test"], "DRIVE training/ and test/ folders")
    lists, errors = {}, []
    for name, part in (("training", training), ("test", test)):
        folders = {}
        for key, names in (("image", ["images"]), ("label", ["1st_manual"]), ("fov", ["mask"])):
            folders[key] = child_folder(part, names)
            if folders[key] is None:
                errors.append(f"{part / names[0]}: folder not found (the official DRIVE {name} set has images/, "
                              "1st_manual/ and mask/).")
        if any(f is None for f in folders.values()):
            continue
        by_id = {}
        for key, folder in folders.items():
            for stem, path in image_files(folder, natural=True).items():
                number = re.match(r"\d+", stem)
                if number is None:
                    continue
                by_id.setdefault(int(number.group()), {})[key] = path
        items = []
        for number in sorted(by_id):
            entry = by_id[number]
            if "image" not in entry:
                other = entry.get("label") or entry.get("fov")
                errors.append(f"{other}: {'mask' if 'label' in entry else 'FOV mask'} has no image in {folders['image']}.")
                continue
            for key, what in (("label", "manual annotation"), ("fov", "FOV mask")):
                if key not in entry:
                    errors.append(f"{entry['image']}: image has no {what} in {folders[key]} (id {number:02d}).")
            items.append({k: str(v.absolute()) for k, v in entry.items()})
        lists[name] = items
    raise_problems(errors)
    lists["validation"] = list(lists["test"])
    notes = [f"official split: training {len(lists['training'])}, test {len(lists['test'])} (paper: 20/20); "
             "validation list = test list (the paper has no validation set; val_from_train=N holds out N training "
             "images instead)", "FOV masks (mask/*.gif) kept under the key 'fov'"]
    return lists, notes


def _chase(root: Path, stage: StagedFolders, seed: int, options: dict):
    folder = next((d for d in walk_dirs(root, 2) if any(p.name.lower().endswith("_1stho.png") for p in d.iterdir()
                                                          if p.is_file())), None)
    if folder is None:
        raise DataCheckError(f"{root}: no CHASE-DB1 files found (Image_XXL.jpg + Image_XXL_1stHO.png).")
    files = image_files(folder, natural=True)
    images = {s: p for s, p in files.items() if not re.search(r"_(1st|2nd)ho$", s, re.I)}
    masks = {s: p for s, p in files.items() if re.search(r"_1stho$", s, re.I)}
    suffix = next((s[-6:] for s in masks), "_1stHO")
    items = pair_by_stem(images, masks, lambda s: f"{s}{suffix}", folder, folder)
    lists, notes = paper_split(items, PAPER_SPLITS["chase-db1"], seed, options.get("split_order"))
    return lists, notes + ["labels: first human observer (_1stHO); _2ndHO ignored"]


def _folder(root: Path, stage: StagedFolders, seed: int, options: dict):
    images_dir, masks_dir = root / options.get("images", "images"), root / options.get("masks", "masks")
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataCheckError(f"{folder}: folder not found (expected {images_dir.name}/ and {masks_dir.name}/ in {root}).")
    items = pair_by_stem(image_files(images_dir, natural=True), image_files(masks_dir, natural=True), lambda s: s, images_dir, masks_dir)
    val_fraction = float(options.get("val_fraction", 0.1))
    test_fraction = float(options.get("test_fraction", 0.1))
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, got {val_fraction} "
                         f"and {test_fraction}.")
    n = len(items)
    counts = [round(n * f) if f == 0 or n < 3 else max(1, round(n * f)) for f in (val_fraction, test_fraction)]
    val, test = counts if sum(counts) < n else (0, 0)
    order = options.get("split_order") or "random"
    lists = cut_items(items, n - val - test, val, test, False, order, seed)
    return lists, [f"{describe_split(lists, order, seed)}; fractions val {val_fraction}, test {test_fraction}"]


_LAYOUT_FUNCTIONS = {
    "kvasir-seg": _kvasir,
    "cvc-clinicdb": _cvc,
    "dsb2018": _dsb,
    "isic2018": _isic,
    "em-isbi2012": _em,
    "drive": _drive,
    "chase-db1": _chase,
    "folder": _folder,
}


def prepare(
    layout: str,
    root: str | os.PathLike,
    out_json: str | os.PathLike,
    seed: int = 0,
    split_order: str | None = None,
    val_from_train: int = 0,
    offline_copies: int | str = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    quiet: bool = False,
) -> DataReport | VolumeReport:
    """Read the dataset ``root`` in its native ``layout`` (one of :data:`LAYOUTS`), check it, and write the MONAI
    datalist ``out_json`` (``training``, ``validation``, ``test`` lists of ``{"image", "label"}``; DRIVE adds
    ``"fov"``) with the paper's split sizes and ``seed``.

    Args:
        layout: see the module table.
        root: the dataset folder (or a folder above it).
        out_json: where to write the datalist; generated files go into folders next to it.
        seed: seed of the random splits (and of the offline augmentation).
        split_order: ``"random"`` or ``"contiguous"`` instead of the layout's default.
        val_from_train: hold out this many training images as validation (for layouts whose validation list is
            otherwise the test list).
        offline_copies: write this many fixed augmented copies of every training image (Table I's "train after
            aug."; ``"paper"`` = the dataset's Table I factor, :data:`fanet_monai.presets.PRESETS`) into
            ``<layout>_augmented/`` next to ``out_json`` and add them to the training list.
        val_fraction, test_fraction: split of the ``folder`` layout.
        quiet: do not print the report.

    Returns:
        the :class:`~fanet_monai.data.checks.DataReport` (``report.text()`` is what was printed); for ``msd``, a
        :class:`~fanet_monai.data.volumes.VolumeReport` (:func:`fanet_monai.data.decathlon.prepare_msd`).

    Raises:
        DataCheckError: naming the file, for every problem of :mod:`fanet_monai.data.checks` and of the layout
            (missing folders, unpaired files); nothing is written then (no ``out_json``, no generated folders).
    """
    if layout in VOLUME_LAYOUTS:
        return prepare_msd(root, out_json, seed, split_order, val_from_train, offline_copies, val_fraction, quiet)
    if layout not in _LAYOUT_FUNCTIONS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS + VOLUME_LAYOUTS)}.")
    root, out_json = Path(root).expanduser(), Path(out_json).expanduser().absolute()
    if not root.is_dir():
        raise DataCheckError(f"{root}: dataset folder not found.")
    copies = offline_copies
    if copies == "paper":
        copies = preset_value(layout, "offline_copies") if layout != "folder" else 0
    copies = int(copies)
    options = {"split_order": split_order, "val_fraction": val_fraction, "test_fraction": test_fraction}
    stage = StagedFolders(out_json.parent)
    try:
        lists, notes = _LAYOUT_FUNCTIONS[layout](root, stage, seed, options)
        if val_from_train:
            notes += hold_out(lists, int(val_from_train), seed)
        lists = {name: lists[name] for name in ("training", "validation", "test")}
        report = check_items(lists, title=f"{layout}: {root}")
        report.notes = notes + report.notes
        if copies:
            folder = stage.folder(f"{layout}_augmented")
            extra = expand_offline(lists["training"], folder, copies, seed=seed)
            report.notes.append(f"offline augmentation: {copies} copies of each of the {len(lists['training'])} "
                                f"training images → {len(lists['training']) + len(extra)} training items (Table I "
                                f"'train after aug.'); train with --augmentation none to use only these")
            lists["training"] = lists["training"] + extra
        lists = {name: [{k: stage.final(v) for k, v in item.items()} for item in items]
                 for name, items in lists.items()}
        stage.commit()
    except BaseException:
        stage.discard()
        raise
    content = {
        "name": layout,
        "description": f"{layout} prepared by fanet_monai.data.layouts.prepare from {root}",
        "seed": seed,
        "numTraining": len(lists["training"]),
        **lists,
    }
    write_json(out_json, content)
    report.notes.append(f"datalist written to {out_json}")
    if not quiet:
        print(report.text())
    return report
