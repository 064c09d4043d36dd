"""The paper's split sizes (Table I) and how a list of items is cut into training, validation and test."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Dict, List, Tuple

from fanet_monai.data.files import natural_key

__all__ = ["PAPER_SPLITS", "PaperSplit", "cut_items", "describe_split", "hold_out", "paper_split", "split_counts"]


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


def cut_items(items: List[Dict[str, str]], train: int, val: int, test: int, val_is_test: bool, order: str,
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


def describe_split(lists: dict, order: str, seed: int) -> str:
    how = f"seeded random (seed {seed})" if order == "random" else "contiguous (sorted names)"
    return (f"split {len(lists['training'])}/{len(lists['validation'])}/{len(lists['test'])} (train/val/test), "
            f"{how}")


def paper_split(items: List[Dict[str, str]], spec: PaperSplit, seed: int, order: str | None) -> Tuple[dict, List[str]]:
    """Cut ``items`` with the paper's sizes ``spec`` (``order`` overrides its order); returns the lists and notes
    for the report."""
    order = order or spec.order
    train, val, test, exact = split_counts(len(items), spec)
    lists = cut_items(items, train, val, test, spec.val == "test", order, seed)
    paper_val = spec.val if spec.val != "rest" else spec.total - spec.train - spec.test
    notes = [f"{describe_split(lists, order, seed)}; paper: {spec.train}/{paper_val}/{spec.test} of {spec.total}"
             + ("" if exact else f" — this dataset has {len(items)} images: same proportions")]
    if spec.val == "test":
        notes.append("validation list = test list (the paper has no separate validation set; val_from_train=N "
                     "holds out N training images instead)")
    return lists, notes


def hold_out(lists: dict, count: int, seed: int) -> List[str]:
    """Move ``count`` seeded-random training items to a separate validation list."""
    training = list(lists["training"])
    if not 0 < count < len(training):
        raise ValueError(f"val_from_train must be between 1 and {len(training) - 1}, got {count}.")
    picked = set(random.Random(seed + 1).sample(range(len(training)), count))
    lists["validation"] = [item for i, item in enumerate(training) if i in picked]
    lists["training"] = [item for i, item in enumerate(training) if i not in picked]
    return [f"validation = {count} images held out of the training list (val_from_train)"]
