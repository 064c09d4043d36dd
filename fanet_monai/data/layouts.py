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
============== ========================================================================= ======================

"val = test": the paper reports no validation set for these; the validation list is the test list (as the
reference code does for Kvasir-SEG) unless ``val_from_train=N`` holds out N training images instead. "rest": the
images neither in the paper's training nor test count (DSB 201, ISIC 520). When a dataset has another number of
images than the paper's, the same proportions are used (and the report says so).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from fanet_monai.data.checks import DataReport, binarize_mask, check_items, read_array
from fanet_monai.data.expand import expand_offline
from fanet_monai.data.files import DataCheckError, file_stem, image_files, natural_key
from fanet_monai.data.readers import normalize_mode
from fanet_monai.presets import preset_value

__all__ = ["LAYOUTS", "PAPER_SPLITS", "PaperSplit", "prepare", "split_counts"]

LAYOUTS = ("kvasir-seg", "cvc-clinicdb", "dsb2018", "isic2018", "em-isbi2012", "drive", "chase-db1", "folder")


@dataclass(frozen=True)
class PaperSplit:
    """Split sizes of one dataset: ``val`` is a count, ``"test"`` (validation list = test list) or ``"rest"``
    (whatever is neither training nor test); ``order`` ``"random"`` (seeded) or ``"contiguous"`` (sorted names:
    training first, test last)."""

    total: int
    train: int
    test: int
    val: int | str
    order: str = "random"


PAPER_SPLITS: Dict[str, PaperSplit] = {
    "kvasir-seg": PaperSplit(1000, 880, 120, "test"),
    "cvc-clinicdb": PaperSplit(612, 490, 61, 61),
    "dsb2018": PaperSplit(670, 335, 134, "rest"),
    "isic2018": PaperSplit(2594, 1815, 259, "rest"),  # Table I says 2596 images; the official training set has 2594
    "em-isbi2012": PaperSplit(30, 24, 3, 3, "contiguous"),  # serial sections: neighbours are correlated
    "chase-db1": PaperSplit(28, 20, 8, "test", "contiguous"),  # first 20 train, last 8 test (Li et al., as the paper)
}


def _pair(
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
    _raise(errors)
    return [{"image": str(images[s].absolute()), "label": str(masks[mask_stem(s)].absolute())} for s in images]


def _raise(errors: List[str]) -> None:
    if len(errors) == 1:
        raise DataCheckError(errors[0])
    if errors:
        raise DataCheckError(f"{len(errors)} problems in the dataset:\n  " + "\n  ".join(errors[:20]) + (
            f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""))


def _walk_dirs(root: Path, depth: int = 3) -> Iterable[Path]:
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


def _child(folder: Path, names: Sequence[str]) -> Optional[Path]:
    """The sub-folder of ``folder`` whose name is one of ``names`` (case- and separator-insensitive)."""
    wanted = {re.sub(r"[\s_-]", "", n.lower()) for n in names}
    try:
        for path in sorted(folder.iterdir()):
            if path.is_dir() and re.sub(r"[\s_-]", "", path.name.lower()) in wanted:
                return path
    except OSError:
        return None
    return None


def _find_pair(root: Path, first: Sequence[str], second: Sequence[str], what: str) -> Tuple[Path, Path]:
    for folder in _walk_dirs(root):
        a, b = _child(folder, first), _child(folder, second)
        if a is not None and b is not None:
            return a, b
    raise DataCheckError(
        f"{root}: no {what} found (looked for a folder holding {first[0]!r} and {second[0]!r} sub-folders)."
    )


class _Stage:
    """Folders generated next to ``OUT.json``: written under temporary names, renamed into place on commit."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.created_out_dir = False
        self.dirs: Dict[Path, Path] = {}

    def folder(self, name: str) -> Path:
        if not self.out_dir.exists():
            self.out_dir.mkdir(parents=True)
            self.created_out_dir = True
        final = self.out_dir / name
        if final not in self.dirs:
            self.dirs[final] = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=self.out_dir))
        return self.dirs[final]

    def final(self, path: str) -> str:
        for final, temp in self.dirs.items():
            if path.startswith(str(temp) + os.sep):
                return str(final) + path[len(str(temp)):]
        return path

    def commit(self) -> None:
        for final, temp in self.dirs.items():
            if final.exists():
                shutil.rmtree(final)
            os.replace(temp, final)
        self.dirs = {}

    def discard(self) -> None:
        for temp in self.dirs.values():
            shutil.rmtree(temp, ignore_errors=True)
        self.dirs = {}
        if self.created_out_dir:
            try:
                self.out_dir.rmdir()
            except OSError:
                pass


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# -- splits -----------------------------------------------------------------------------------------------------------
def split_counts(n: int, spec: PaperSplit) -> Tuple[int, int, int, bool]:
    """``(train, val, test, exact)`` for ``n`` images: the paper's counts when ``n`` is the paper's total (or, for
    ``val="rest"``, at least training + test), else the same proportions (``exact`` False). With ``val="test"`` the
    validation count is the test count (the same list)."""
    if n == spec.total or (spec.val == "rest" and n >= spec.train + spec.test):
        train, test = spec.train, spec.test
        val = n - train - test if spec.val == "rest" else (test if spec.val == "test" else int(spec.val))
        if spec.val not in ("rest", "test"):
            train = n - val - test
        return train, val, test, True
    test = max(1, round(n * spec.test / spec.total)) if n >= 2 else 0
    if spec.val == "test":
        return n - test, test, test, False
    if spec.val == "rest":
        train = max(1, round(n * spec.train / spec.total))
        val = n - train - test
        if val < 1 and n >= 3:
            train, val = train - 1, 1
        return train, val, test, False
    val = max(1, round(n * int(spec.val) / spec.total)) if n >= 3 else 0
    return n - val - test, val, test, False


def _cut(items: List[Dict[str, str]], train: int, val: int, test: int, val_is_test: bool, order: str,
         seed: int) -> Dict[str, List[Dict[str, str]]]:
    """Sort by file name (natural order), shuffle with ``seed`` unless ``order == "contiguous"``, then cut into
    training, validation, test (in that order); ``val_is_test``: the validation list is the test list."""
    if order not in ("random", "contiguous"):
        raise ValueError(f"split order must be 'random' or 'contiguous', got {order!r}.")
    ordered = sorted(items, key=lambda i: natural_key(os.path.basename(i["image"])))
    if order == "random":
        random.Random(seed).shuffle(ordered)
    if val_is_test:
        return {"training": ordered[:train], "validation": ordered[train:], "test": ordered[train:]}
    return {"training": ordered[:train], "validation": ordered[train : train + val], "test": ordered[train + val :]}


def _describe(lists: dict, order: str, seed: int) -> str:
    how = f"seeded random (seed {seed})" if order == "random" else "contiguous (sorted names)"
    return (f"split {len(lists['training'])}/{len(lists['validation'])}/{len(lists['test'])} (train/val/test), "
            f"{how}")


def _split(items: List[Dict[str, str]], spec: PaperSplit, seed: int, order: Optional[str]) -> Tuple[dict, List[str]]:
    order = order or spec.order
    train, val, test, exact = split_counts(len(items), spec)
    lists = _cut(items, train, val, test, spec.val == "test", order, seed)
    paper_val = spec.val if spec.val != "rest" else spec.total - spec.train - spec.test
    notes = [f"{_describe(lists, order, seed)}; paper: {spec.train}/{paper_val}/{spec.test} of {spec.total}"
             + ("" if exact else f" — this dataset has {len(items)} images: same proportions")]
    if spec.val == "test":
        notes.append("validation list = test list (the paper has no separate validation set; val_from_train=N "
                     "holds out N training images instead)")
    return lists, notes


def _hold_out(lists: dict, count: int, seed: int) -> List[str]:
    """Move ``count`` seeded-random training items to a separate validation list."""
    training = list(lists["training"])
    if not 0 < count < len(training):
        raise ValueError(f"val_from_train must be between 1 and {len(training) - 1}, got {count}.")
    picked = set(random.Random(seed + 1).sample(range(len(training)), count))
    lists["validation"] = [item for i, item in enumerate(training) if i in picked]
    lists["training"] = [item for i, item in enumerate(training) if i not in picked]
    return [f"validation = {count} images held out of the training list (val_from_train)"]


# -- layouts ----------------------------------------------------------------------------------------------------------
def _read_list(path: Path, stems: Dict[str, Path], images_dir: Path) -> List[str]:
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


def _kvasir(root: Path, stage: _Stage, seed: int, options: dict):
    images_dir, masks_dir = _find_pair(root, ["images"], ["masks"], "Kvasir-SEG images/ and masks/ folders")
    images, masks = image_files(images_dir, natural=True), image_files(masks_dir, natural=True)
    items = _pair(images, masks, lambda s: s, images_dir, masks_dir)
    folder = images_dir.parent
    lists_dir = next((d for d in (folder, root) if (d / "train.txt").is_file() and (d / "val.txt").is_file()), None)
    if lists_dir is None:
        return _split(items, PAPER_SPLITS["kvasir-seg"], seed, options.get("split_order"))
    by_stem = {file_stem(i["image"]): i for i in items}
    train = _read_list(lists_dir / "train.txt", images, images_dir)
    test = _read_list(lists_dir / "val.txt", images, images_dir)
    lists = {"training": [by_stem[s] for s in train], "validation": [by_stem[s] for s in test],
             "test": [by_stem[s] for s in test]}
    notes = [f"split from {lists_dir / 'train.txt'} and val.txt: {len(train)}/{len(test)} (paper: 880/120); "
             "validation list = test list (val.txt), as the reference code"]
    unused = len(items) - len(set(train) | set(test))
    if unused:
        notes.append(f"{unused} images are in neither train.txt nor val.txt and are left out")
    return lists, notes


def _cvc(root: Path, stage: _Stage, seed: int, options: dict):
    candidates = []
    for folder in _walk_dirs(root):
        original = _child(folder, ["Original"])
        truth = _child(folder, ["Ground Truth", "GroundTruth"])
        if original is not None and truth is not None:
            candidates.append((original, truth))
    if not candidates:
        raise DataCheckError(f"{root}: no CVC-ClinicDB 'Original' and 'Ground Truth' folders found.")
    tif = [c for c in candidates if any(p.suffix.lower() in (".tif", ".tiff") for p in c[0].iterdir())]
    original, truth = (tif or candidates)[0]
    items = _pair(image_files(original, natural=True), image_files(truth, natural=True), lambda s: s, original, truth)
    return _split(items, PAPER_SPLITS["cvc-clinicdb"], seed, options.get("split_order"))


def _dsb(root: Path, stage: _Stage, seed: int, options: dict):
    train_dir = _child(root, ["stage1_train"])
    if train_dir is None:
        train_dir = next((d for d in _walk_dirs(root, 2) if d.name.lower() == "stage1_train"), root)
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
        _write_png(target, union.astype(np.uint8) * 255)
        items.append({"image": str(image.absolute()), "label": str(target)})
    _raise(errors)
    lists, notes = _split(items, PAPER_SPLITS["dsb2018"], seed, options.get("split_order"))
    return lists, notes + [f"masks: the per-nucleus masks of each case merged by union into "
                           f"{stage.out_dir / 'dsb2018_masks'}"]


def _isic(root: Path, stage: _Stage, seed: int, options: dict):
    def norm(path: Path) -> str:
        return path.name.lower().replace("-", "_")

    dirs = list(_walk_dirs(root, 2))
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
    items = _pair(images, masks, lambda s: f"{s}_segmentation", input_dir, truth_dir)
    lists, notes = _split(items, PAPER_SPLITS["isic2018"], seed, options.get("split_order"))
    return lists, notes + [f"images {input_dir}, masks {truth_dir} (the official validation/test inputs are not used)"]


def _em(root: Path, stage: _Stage, seed: int, options: dict):
    volume = next((d / "train-volume.tif" for d in _walk_dirs(root, 2) if (d / "train-volume.tif").is_file()), None)
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
                        _write_png(out / folder / f"{index:02d}.png", array)
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
            images_dir, masks_dir = _find_pair(root, ["images", "image"], ["masks", "label", "labels"], "EM slices")
        except DataCheckError:
            raise DataCheckError(f"{root}: no train-volume.tif + train-labels.tif and no images/ + masks/ slice "
                                 "folders found (ISBI 2012 EM).") from None
    items = _pair(image_files(images_dir, natural=True), image_files(masks_dir, natural=True), lambda s: s, images_dir, masks_dir)
    lists, split_notes = _split(items, PAPER_SPLITS["em-isbi2012"], seed, options.get("split_order"))
    return lists, split_notes + notes


def _drive(root: Path, stage: _Stage, seed: int, options: dict):
    training, test = _find_pair(root, ["training"], ["test"], "DRIVE training/ and test/ folders")
    lists, errors = {}, []
    for name, part in (("training", training), ("test", test)):
        folders = {}
        for key, names in (("image", ["images"]), ("label", ["1st_manual"]), ("fov", ["mask"])):
            folders[key] = _child(part, names)
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
    _raise(errors)
    lists["validation"] = list(lists["test"])
    notes = [f"official split: training {len(lists['training'])}, test {len(lists['test'])} (paper: 20/20); "
             "validation list = test list (the paper has no validation set; val_from_train=N holds out N training "
             "images instead)", "FOV masks (mask/*.gif) kept under the key 'fov'"]
    return lists, notes


def _chase(root: Path, stage: _Stage, seed: int, options: dict):
    folder = next((d for d in _walk_dirs(root, 2) if any(p.name.lower().endswith("_1stho.png") for p in d.iterdir()
                                                          if p.is_file())), None)
    if folder is None:
        raise DataCheckError(f"{root}: no CHASE-DB1 files found (Image_XXL.jpg + Image_XXL_1stHO.png).")
    files = image_files(folder, natural=True)
    images = {s: p for s, p in files.items() if not re.search(r"_(1st|2nd)ho$", s, re.I)}
    masks = {s: p for s, p in files.items() if re.search(r"_1stho$", s, re.I)}
    suffix = next((s[-6:] for s in masks), "_1stHO")
    items = _pair(images, masks, lambda s: f"{s}{suffix}", folder, folder)
    lists, notes = _split(items, PAPER_SPLITS["chase-db1"], seed, options.get("split_order"))
    return lists, notes + ["labels: first human observer (_1stHO); _2ndHO ignored"]


def _folder(root: Path, stage: _Stage, seed: int, options: dict):
    images_dir, masks_dir = root / options.get("images", "images"), root / options.get("masks", "masks")
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataCheckError(f"{folder}: folder not found (expected {images_dir.name}/ and {masks_dir.name}/ in {root}).")
    items = _pair(image_files(images_dir, natural=True), image_files(masks_dir, natural=True), lambda s: s, images_dir, masks_dir)
    val_fraction = float(options.get("val_fraction", 0.1))
    test_fraction = float(options.get("test_fraction", 0.1))
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, got {val_fraction} "
                         f"and {test_fraction}.")
    n = len(items)
    counts = [round(n * f) if f == 0 or n < 3 else max(1, round(n * f)) for f in (val_fraction, test_fraction)]
    val, test = counts if sum(counts) < n else (0, 0)
    order = options.get("split_order") or "random"
    lists = _cut(items, n - val - test, val, test, False, order, seed)
    return lists, [f"{_describe(lists, order, seed)}; fractions val {val_fraction}, test {test_fraction}"]


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


def _write_json_atomically(path: Path, content: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(content, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def prepare(
    layout: str,
    root: str | os.PathLike,
    out_json: str | os.PathLike,
    seed: int = 0,
    split_order: Optional[str] = None,
    val_from_train: int = 0,
    offline_copies: int | str = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    quiet: bool = False,
) -> DataReport:
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
        the :class:`~fanet_monai.data.checks.DataReport` (``report.text()`` is what was printed).

    Raises:
        DataCheckError: naming the file, for every problem of :mod:`fanet_monai.data.checks` and of the layout
            (missing folders, unpaired files); nothing is written then (no ``out_json``, no generated folders).
    """
    if layout not in _LAYOUT_FUNCTIONS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}.")
    root, out_json = Path(root).expanduser(), Path(out_json).expanduser().absolute()
    if not root.is_dir():
        raise DataCheckError(f"{root}: dataset folder not found.")
    copies = offline_copies
    if copies == "paper":
        copies = preset_value(layout, "offline_copies") if layout != "folder" else 0
    copies = int(copies)
    options = {"split_order": split_order, "val_fraction": val_fraction, "test_fraction": test_fraction}
    stage = _Stage(out_json.parent)
    try:
        lists, notes = _LAYOUT_FUNCTIONS[layout](root, stage, seed, options)
        if val_from_train:
            notes += _hold_out(lists, int(val_from_train), seed)
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
    _write_json_atomically(out_json, content)
    report.notes.append(f"datalist written to {out_json}")
    if not quiet:
        print(report.text())
    return report
