"""Boundary metrics (HD95, surface Dice) per pass and per class, in the labels' voxel units, and the 3-D
qualitative panel (issue 20: evaluation of volumes)."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import MetaTensor, list_data_collate

from fanet_monai.evaluation.passwise import voxel_sizes
from fanet_monai.evaluation.plots import orthogonal_slices, plot_qualitative
from fanet_monai.metrics import PassWiseMetrics, segmentation_metrics
from fanet_monai.surface import per_class_surface_metrics, surface_metrics


def _squares(shift: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)
    target[0, 0, 4:8, 4:8] = 1
    pred[0, 0, 4 + shift:8 + shift, 4:8] = 1  # moved by `shift` along the first axis
    return pred, target


def test_hd95_and_surface_dice_in_voxels_and_in_the_given_spacing():
    pred, target = _squares(1)
    voxels = surface_metrics(pred, target)
    assert voxels["hd95"].item() == pytest.approx(1.0) and voxels["surface_dice"].item() == pytest.approx(1.0)
    mm = surface_metrics(pred, target, spacing=[2.0, 1.0], tolerance=1.0)  # the shift is now 2 mm
    assert mm["hd95"].item() == pytest.approx(2.0) and mm["surface_dice"].item() < 1.0
    assert surface_metrics(pred, target, spacing=[2.0, 1.0], tolerance=2.0)["surface_dice"].item() == 1.0
    identical = surface_metrics(target, target)
    assert identical["hd95"].item() == 0.0 and identical["surface_dice"].item() == 1.0


def test_empty_masks_follow_one_rule_never_nan():
    empty, (_, target) = torch.zeros(2, 1, 12, 16), _squares()
    both = surface_metrics(empty, empty, spacing=[1.0, 2.0])
    assert both["hd95"].tolist() == [0.0, 0.0] and both["surface_dice"].tolist() == [1.0, 1.0]
    missed = surface_metrics(torch.zeros_like(target), target, spacing=[1.0, 2.0])
    assert missed["hd95"].item() == pytest.approx(math.hypot(16, 32)) and missed["surface_dice"].item() == 0.0
    spurious = surface_metrics(target, torch.zeros_like(target))
    assert spurious["hd95"].item() == pytest.approx(math.hypot(16, 16)) and spurious["surface_dice"].item() == 0.0


def test_volumes_and_classes():
    pred, target = torch.zeros(1, 1, 12, 12, 12), torch.zeros(1, 1, 12, 12, 12)
    target[0, 0, 2:6, 2:6, 2:6] = 1
    target[0, 0, 7:10, 7:10, 7:10] = 2
    pred[0, 0, 2:6, 2:6, 3:7] = 1  # class 1 shifted by one voxel along z (3 mm)
    pred[0, 0, 7:10, 7:10, 7:10] = 2  # class 2 exact
    per_class = per_class_surface_metrics(pred, target, 2, spacing=[1.0, 1.0, 3.0])
    assert per_class["hd95"].shape == (1, 2)
    assert per_class["hd95"][0].tolist() == pytest.approx([3.0, 0.0])
    assert per_class["surface_dice"][0, 1].item() == 1.0 and per_class["surface_dice"][0, 0].item() < 1.0
    with pytest.raises(ValueError, match="spacing must be 3 positive numbers"):
        surface_metrics(pred > 0, target > 0, spacing=[1.0, 1.0])
    with pytest.raises(ValueError, match="unknown surface metrics"):
        surface_metrics(pred > 0, target > 0, metrics=["hd100"])


def test_passwise_metrics_report_boundary_metrics_per_class_and_the_foreground():
    pred, target = torch.zeros(2, 1, 10, 10, 10), torch.zeros(2, 1, 10, 10, 10)
    target[:, 0, 1:4, 1:4, 1:4], target[:, 0, 5:9, 5:9, 5:9] = 1, 2
    pred.copy_(target)
    pred[1, 0, 5:9, 5:9, 5:9] = 0  # image 2 misses class 2
    metric = PassWiseMetrics(["f1", "hd95", "surface_dice"], num_classes=2)
    assert metric.columns == ("f1", "hd95", "surface_dice", "dice_class_1", "dice_class_2", "dice_class_mean",
                              "hd95_class_1", "hd95_class_2", "hd95_class_mean", "surface_dice_class_1",
                              "surface_dice_class_2", "surface_dice_class_mean")
    metric.update(0, pred, target, spacing=[[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    row = metric.aggregate()[0]
    diagonal = math.sqrt(3 * 20.0 ** 2)  # image 2: 10 voxels of 2 mm per axis
    assert row["hd95_class_1"] == 0.0 and row["hd95_class_2"] == pytest.approx(diagonal / 2)
    assert row["surface_dice_class_2"] == pytest.approx(0.5) and row["surface_dice_class_1"] == 1.0
    binary = segmentation_metrics(pred > 0, target > 0, ["f1", "hd95"])
    assert set(binary) == {"f1", "hd95"} and binary["hd95"][0] == 0.0


def test_voxel_sizes_come_from_each_labels_affine():
    a = MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.diag(torch.tensor([2.0, 1.0, 3.0, 1.0])))
    b = MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.diag(torch.tensor([1.0, 0.5, 1.0, 1.0])))
    batch = list_data_collate([{"label": a}, {"label": b}])["label"]
    assert voxel_sizes(batch) == [[2.0, 1.0, 3.0], [1.0, 0.5, 1.0]]
    assert voxel_sizes(torch.zeros(2, 1, 4, 4)) is None


def test_a_volume_is_shown_as_three_orthogonal_slices_through_the_label(tmp_path):
    label = torch.zeros(8, 10, 12, dtype=torch.bool)
    label[2:5, 6:9, 3:6] = True  # centre of mass (3, 7, 4)
    example = {"image": torch.rand(1, 8, 10, 12), "label": label, "start": torch.zeros_like(label),
               "passes": torch.stack([label, label])}
    rows = orthogonal_slices(example)
    assert [r["plane"] for r in rows] == ["sagittal 3", "coronal 7", "axial 4"]
    assert [tuple(r["label"].shape) for r in rows] == [(10, 12), (8, 12), (8, 10)]
    assert [tuple(r["passes"].shape) for r in rows] == [(2, 10, 12), (2, 8, 12), (2, 8, 10)]
    assert all(r["label"].any() for r in rows)
    path = plot_qualitative([example], [1, 2], tmp_path / "qualitative.png")
    assert path.stat().st_size > 1000
