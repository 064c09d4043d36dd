"""Per-image paper metrics: hand-computed values, zero-denominator convention, per-image averaging, per pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fanet_monai.metrics import PAPER_METRICS, PassWiseMetrics, fbeta_from_confusion, segmentation_metrics


def as_mask(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


# TP = 2, FP = 2, FN = 1, TN = 4
PRED = as_mask([[1, 1, 1], [0, 1, 0], [0, 0, 0]])
TARGET = as_mask([[1, 0, 0], [1, 1, 0], [0, 0, 0]])
HAND = {
    "jaccard": 2 / 5,
    "f1": 4 / 7,
    "recall": 2 / 3,
    "precision": 2 / 4,
    "specificity": 4 / 6,
    "accuracy": 6 / 9,
    "f2": 5 * 2 / (5 * 2 + 4 * 1 + 2),
}


def test_paper_order():
    assert PAPER_METRICS == ("jaccard", "f1", "recall", "precision", "specificity", "accuracy", "f2")


def test_hand_computation():
    values = segmentation_metrics(PRED, TARGET)
    assert list(values) == list(PAPER_METRICS)
    for name, expected in HAND.items():
        assert values[name].shape == (1,)
        assert values[name].item() == pytest.approx(expected), name


def test_f2_equals_fbeta_formula():
    p, r = HAND["precision"], HAND["recall"]
    assert HAND["f2"] == pytest.approx(5 * p * r / (4 * p + r))
    confusion = torch.tensor([[2.0, 2.0, 4.0, 1.0]])
    assert fbeta_from_confusion(confusion, 1.0).item() == pytest.approx(HAND["f1"])
    assert math.isnan(fbeta_from_confusion(torch.tensor([0.0, 0.0, 9.0, 0.0]), 2.0).item())


def test_bool_and_probability_inputs_are_binarized():
    soft = PRED * 0.9 + (1 - PRED) * 0.2
    for pred in (PRED.bool(), soft):
        values = segmentation_metrics(pred, TARGET.bool())
        assert values["jaccard"].item() == pytest.approx(HAND["jaccard"])


def test_empty_ground_truth_and_empty_prediction_is_perfect():
    empty = torch.zeros(1, 1, 3, 3)
    values = segmentation_metrics(empty, empty)
    assert all(v.item() == 1.0 for v in values.values())


def test_empty_ground_truth_nonempty_prediction():
    empty = torch.zeros(1, 1, 3, 3)
    values = segmentation_metrics(PRED, empty)  # 4 false positives
    for name in ("jaccard", "f1", "recall", "precision", "f2"):
        assert values[name].item() == 0.0, name
    assert values["specificity"].item() == pytest.approx(5 / 9)
    assert values["accuracy"].item() == pytest.approx(5 / 9)


def test_nonempty_ground_truth_empty_prediction():
    empty = torch.zeros(1, 1, 3, 3)
    values = segmentation_metrics(empty, TARGET)  # 3 false negatives
    for name in ("jaccard", "f1", "recall", "precision", "f2"):
        assert values[name].item() == 0.0, name
    assert values["specificity"].item() == 1.0
    assert values["accuracy"].item() == pytest.approx(6 / 9)


def test_all_positive_ground_truth_specificity():
    full = torch.ones(1, 1, 3, 3)
    assert segmentation_metrics(full, full)["specificity"].item() == 1.0  # no negatives, none missed
    values = segmentation_metrics(PRED, full)  # no negatives, 5 positives missed
    assert values["specificity"].item() == 0.0
    assert values["recall"].item() == pytest.approx(4 / 9)
    assert values["precision"].item() == 1.0


def test_no_nan_ever():
    cases = [torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)]
    for pred in cases:
        for target in cases:
            for value in segmentation_metrics(pred, target).values():
                assert torch.isfinite(value).all()


def test_per_image_averaging_not_pooled():
    # image 0: perfect on a large object; image 1: half of a tiny object
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :, :3] = 1
    target[1, 0, 0, :2] = 1
    pred = target.clone()
    pred[1, 0, 0, 1] = 0
    values = segmentation_metrics(pred, target)
    assert values["recall"].tolist() == pytest.approx([1.0, 0.5])
    assert values["recall"].mean().item() == pytest.approx(0.75)
    pooled = (pred * target).sum() / target.sum()
    assert pooled.item() == pytest.approx(13 / 14)  # differs from the per-image mean


def test_3d_and_subset_of_metrics():
    pred = torch.zeros(1, 1, 2, 3, 3)
    target = torch.zeros(1, 1, 2, 3, 3)
    pred[0, 0, 0] = PRED[0, 0]
    target[0, 0, 0] = TARGET[0, 0]
    values = segmentation_metrics(pred, target, metrics=("jaccard", "specificity"))
    assert set(values) == {"jaccard", "specificity"}
    assert values["jaccard"].item() == pytest.approx(2 / 5)
    assert values["specificity"].item() == pytest.approx(13 / 15)


@pytest.mark.parametrize(
    "pred, target, metrics, message",
    [
        (torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 4), PAPER_METRICS, "same shape"),
        (torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), PAPER_METRICS, "B, 1"),
        (torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3), ("dice",), "unknown metrics"),
    ],
)
def test_invalid_inputs(pred, target, metrics, message):
    with pytest.raises(ValueError, match=message):
        segmentation_metrics(pred, target, metrics)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3))
def test_properties(seed, batch):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.rand(batch, 1, 5, 4, generator=g) > 0.5).float()
    target = (torch.rand(batch, 1, 5, 4, generator=g) > 0.5).float()
    v = segmentation_metrics(pred, target)
    for value in v.values():
        assert ((value >= 0) & (value <= 1)).all()
    # Dice and Jaccard are tied: F1 = 2J / (1 + J); accuracy is the fraction of equal pixels
    assert torch.allclose(v["f1"], 2 * v["jaccard"] / (1 + v["jaccard"]), atol=1e-6)
    assert torch.allclose(v["accuracy"], (pred == target).float().flatten(1).mean(1))
    # identical masks are perfect
    assert all((x == 1).all() for x in segmentation_metrics(target, target).values())


def test_passwise_aggregation():
    metric = PassWiseMetrics()
    assert metric.aggregate() == []
    empty = torch.zeros(1, 1, 3, 3)
    # pass 0: two batches (3 images); pass 1: one batch
    metric.update(0, PRED, TARGET)
    metric.update(0, torch.cat([TARGET, empty]), torch.cat([TARGET, TARGET]))
    metric.update(1, torch.cat([TARGET, TARGET]), torch.cat([TARGET, TARGET]))
    table = metric.aggregate()
    assert [row["pass"] for row in table] == [0, 1]
    assert [row["n_images"] for row in table] == [3, 2]
    assert table[0]["jaccard"] == pytest.approx((2 / 5 + 1.0 + 0.0) / 3)
    assert table[0]["specificity"] == pytest.approx((4 / 6 + 1.0 + 1.0) / 3)
    assert all(table[1][name] == 1.0 for name in PAPER_METRICS)
    metric.reset()
    assert metric.aggregate() == []


def test_passwise_missing_pass_and_subset():
    metric = PassWiseMetrics(metrics=("f1",))
    returned = metric.update(2, PRED, TARGET)
    assert returned["f1"].item() == pytest.approx(4 / 7)
    table = metric.aggregate()
    assert len(table) == 3
    assert table[0]["n_images"] == 0 and np.isnan(table[0]["f1"])
    assert table[2] == {"pass": 2, "n_images": 1, "f1": pytest.approx(4 / 7)}
    with pytest.raises(ValueError, match="pass_index"):
        metric.update(-1, PRED, TARGET)
    with pytest.raises(ValueError, match="unknown metrics"):
        PassWiseMetrics(metrics=("iou",))
