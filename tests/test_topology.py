"""Connectivity metrics (clDice, Betti-0) and the synthetic thin-structure set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.morphology import skeletonize

from fanet_monai.data.synthetic import make_thin_structure_dataset
from fanet_monai.topology import betti0, centerline_dice, connectivity_metrics


def _line_mask(cut: bool = False, width: int = 1) -> np.ndarray:
    mask = np.zeros((32, 32), dtype=bool)
    mask[16 - width // 2 : 16 - width // 2 + width, 2:30] = True
    if cut:
        mask[:, 15:17] = False
    return mask


def test_betti0_counts_components_with_full_connectivity():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal neighbours: one component
    mask[7:9, 7:9] = True
    assert betti0(mask) == 2
    assert betti0(np.zeros((5, 5), dtype=bool)) == 0


def test_cldice_penalises_a_cut_that_dice_barely_sees():
    label = _line_mask(width=3)
    cut = _line_mask(cut=True, width=3)
    dice = 2 * (label & cut).sum() / (label.sum() + cut.sum())
    assert dice > 0.95
    assert centerline_dice(label, label) == 1.0
    # the cut removes 2 of the 28 skeleton pixels from the prediction's coverage: Tsens = 26/28, Tprec = 1
    skeleton = skeletonize(label)
    tsens = (skeleton & cut).sum() / skeleton.sum()
    assert centerline_dice(cut, label) == pytest.approx(2 * tsens / (1 + tsens))
    assert betti0(cut) - betti0(label) == 1


def test_cldice_empty_conventions():
    empty = np.zeros((16, 16), dtype=bool)
    assert centerline_dice(empty, empty) == 1.0
    line = _line_mask()[8:24, 8:24]
    assert centerline_dice(line, empty) == 0.0  # Tprec = 0; Tsens: empty label skeleton, masks differ → 0
    assert centerline_dice(empty, line) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        centerline_dice(empty, _line_mask())


def test_connectivity_metrics_batch_values():
    label = torch.from_numpy(np.stack([_line_mask(), _line_mask()]))[:, None].float()
    pred = torch.from_numpy(np.stack([_line_mask(), _line_mask(cut=True)]))[:, None].float()
    values = connectivity_metrics(pred, label)
    assert set(values) == {"cldice", "betti0_error", "components"}
    assert values["cldice"][0] == 1.0 and values["cldice"][1] < 1.0
    assert values["betti0_error"].tolist() == [0.0, 1.0]
    assert values["components"].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        connectivity_metrics(pred[:, 0], label[:, 0])


def test_thin_structure_dataset_is_thin_connected_and_reproducible(tmp_path):
    root = make_thin_structure_dataset(tmp_path / "a", num_images=4, height=64, width=80, seed=3)
    again = make_thin_structure_dataset(tmp_path / "b", num_images=4, height=64, width=80, seed=3)
    names = sorted(p.name for p in (root / "images").iterdir())
    assert names == [f"vessel_{i:03d}.png" for i in range(4)]
    for name in names:
        image = np.array(Image.open(root / "images" / name))
        mask = np.array(Image.open(root / "masks" / name))
        assert image.shape == (64, 80, 3) and image.dtype == np.uint8
        assert mask.shape == (64, 80) and set(np.unique(mask)) <= {0, 255}
        fg = mask > 0
        assert 0.005 < fg.mean() < 0.25  # thin structures, not blobs
        assert betti0(fg) <= 6  # a few trees, not scattered dots
        # 1-4 px wide: almost every foreground pixel lies within 2 px of the skeleton
        from scipy.ndimage import distance_transform_edt

        distance = distance_transform_edt(~skeletonize(fg))
        assert np.percentile(distance[fg], 99) <= 2.5
        # dark structures: foreground darker than background on average
        assert image[..., 0][fg].mean() < image[..., 0][~fg].mean()
        np.testing.assert_array_equal(image, np.array(Image.open(again / "images" / name)))
    with pytest.raises(ValueError, match="polarity"):
        make_thin_structure_dataset(tmp_path / "c", num_images=1, polarity="green")
