"""Synthetic structures for native-resolution training: 2-D thin vessels, 3-D tubes with gaps, multi-class blobs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage
from PIL import Image
from scipy.ndimage import distance_transform_edt
from skimage.filters import threshold_otsu
from skimage.measure import label as connected_components

from fanet_monai.data import (
    folder_datalist,
    make_blob_volume,
    make_tube_volume,
    make_vessel_dataset,
    make_vessel_image,
    make_volume_dataset,
)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


@pytest.mark.parametrize("height, width", [(64, 64), (96, 80), (584, 565)])
def test_vessel_image_shapes_dtypes_and_seed(height, width):
    image, mask = make_vessel_image(height, width, 3)
    assert image.shape == (height, width) and image.dtype == np.uint8
    assert mask.shape == (height, width) and mask.dtype == bool
    again, again_mask = make_vessel_image(height, width, np.random.RandomState(3))  # a seed or a RandomState
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(mask, again_mask)
    other, other_mask = make_vessel_image(height, width, 4)
    assert not np.array_equal(mask, other_mask) and not np.array_equal(image, other)


@pytest.mark.parametrize("height, width, seed", [(64, 64, 0), (96, 80, 1), (96, 80, 2), (584, 565, 5)])
def test_vessels_are_thin_connected_dark_and_hard_for_otsu(height, width, seed):
    image, mask = make_vessel_image(height, width, seed)
    assert 0.005 < mask.mean() < 0.3
    distance = distance_transform_edt(mask)[mask]
    assert np.median(distance) <= 1.5  # most vessel pixels touch the background: 1-2 px wide
    assert distance.max() >= 2  # ... but the trunks are wider (4-6 px)
    assert connected_components(mask, connectivity=2).max() <= 8  # at most one component per tree
    one_tree = make_vessel_image(height, width, seed, num_trees=(1, 1))[1]
    assert connected_components(one_tree, connectivity=2).max() == 1
    assert image[mask].mean() < image[~mask].mean() - 5  # dark vessels on a brighter background
    assert _dice(image < threshold_otsu(image), mask) < 0.5  # the shading defeats a global threshold


def test_vessel_image_default_size_has_thin_vessels_and_wide_trunks():
    image, mask = make_vessel_image(1024, 1024, 0)
    assert image.shape == mask.shape == (1024, 1024)
    distance = distance_transform_edt(mask)[mask]
    assert np.median(distance) <= 1.5 and 2 <= distance.max() <= 4
    assert connected_components(mask, connectivity=2).max() <= 8


@pytest.mark.parametrize("rgb", [True, False])
def test_vessel_dataset_layout_readable_by_loaders(tmp_path, rgb):
    root = make_vessel_dataset(tmp_path / "vessels", num_images=3, height=64, width=72, seed=7, rgb=rgb)
    names = [f"vessels_{i:03d}.png" for i in range(3)]
    assert sorted(p.name for p in (root / "images").iterdir()) == names
    assert sorted(p.name for p in (root / "masks").iterdir()) == names
    assert len(folder_datalist(root, val_fraction=0.0)["training"]) == 3  # paired by the project's folder loader
    rng = np.random.RandomState(7)
    for name in names:
        expected_image, expected_mask = make_vessel_image(64, 72, rng)
        image = np.array(Image.open(root / "images" / name))
        assert image.shape == ((64, 72, 3) if rgb else (64, 72)) and image.dtype == np.uint8
        np.testing.assert_array_equal(image[..., 0] if rgb else image, expected_image)
        loaded = np.asarray(LoadImage(image_only=True, dtype=None)(str(root / "masks" / name)))
        assert loaded.shape == (72, 64)  # MONAI's PIL reader: (width, height)
        np.testing.assert_array_equal(loaded.T, expected_mask.astype(np.uint8) * 255)
        loaded_image = np.asarray(LoadImage(image_only=True, dtype=None)(str(root / "images" / name)))
        np.testing.assert_array_equal(np.moveaxis(loaded_image, 0, 1), image)


def test_tube_volume_shapes_seed_and_gaps():
    shape = (24, 28, 32)
    image, label = make_tube_volume(shape, 0)
    assert image.shape == label.shape == shape
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1}
    again_image, again_label = make_tube_volume(shape, np.random.RandomState(0))
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(label, again_label)
    assert image[label > 0].mean() > image[label == 0].mean() + 0.2  # bright tubes
    with_gaps = without_gaps = 0
    for seed in range(4):
        broken = make_tube_volume(shape, seed)[1]
        whole = make_tube_volume(shape, seed, gaps=False)[1]
        assert np.all(whole[broken > 0] > 0)  # same tubes: gaps only remove voxels
        assert np.count_nonzero(broken) < np.count_nonzero(whole)
        with_gaps += connected_components(broken, connectivity=3).max()
        without_gaps += connected_components(whole, connectivity=3).max()
    assert with_gaps > without_gaps


@pytest.mark.parametrize("num_classes", [1, 2, 4])
def test_blob_volume_labels_are_exactly_0_to_k(num_classes):
    for seed in range(3):
        image, label = make_blob_volume((16, 20, 24), seed, num_classes=num_classes)
        assert image.shape == label.shape == (16, 20, 24)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        np.testing.assert_array_equal(np.unique(label), np.arange(num_classes + 1))
        means = [image[label == k].mean() for k in range(num_classes + 1)]
        assert np.all(np.diff(means) > 0)  # per-class intensity, brighter with the class
    np.testing.assert_array_equal(make_blob_volume((16, 16, 16), 5)[0], make_blob_volume((16, 16, 16), 5)[0])
    with pytest.raises(ValueError, match="num_classes"):
        make_blob_volume((16, 16, 16), 0, num_classes=0)
    with pytest.raises(ValueError, match="3 dimensions"):
        make_blob_volume((16, 16), 0)


@pytest.mark.parametrize("kind, num_classes", [("tubes", 2), ("blobs", 3)])
def test_volume_dataset_nifti_layout_affine_and_labels(tmp_path, kind, num_classes):
    spacing = (0.5, 1.0, 2.0)
    root = make_volume_dataset(
        tmp_path / kind, num_volumes=2, shape=(16, 20, 24), kind=kind, num_classes=num_classes, spacing=spacing, seed=1
    )
    names = [f"{kind}_{i:03d}.nii.gz" for i in range(2)]
    assert sorted(p.name for p in (root / "images").iterdir()) == names
    assert sorted(p.name for p in (root / "masks").iterdir()) == names
    assert len(folder_datalist(root, val_fraction=0.0)["training"]) == 2
    labels = [0, 1] if kind == "tubes" else list(range(num_classes + 1))
    for name in names:
        assert nib.load(root / "images" / name).get_data_dtype() == np.float32
        assert nib.load(root / "masks" / name).get_data_dtype() == np.uint8
        image = LoadImage(image_only=True, dtype=None)(str(root / "images" / name))
        mask = LoadImage(image_only=True, dtype=None)(str(root / "masks" / name))
        assert tuple(image.shape) == tuple(mask.shape) == (16, 20, 24)
        np.testing.assert_allclose(np.asarray(image.affine), np.diag([*spacing, 1.0]))
        np.testing.assert_allclose(np.asarray(mask.affine), np.diag([*spacing, 1.0]))
        np.testing.assert_array_equal(np.unique(np.asarray(mask)), labels)
    again = make_volume_dataset(
        tmp_path / "again",
        num_volumes=2,
        shape=(16, 20, 24),
        kind=kind,
        num_classes=num_classes,
        spacing=spacing,
        seed=1,
    )
    for name in names:
        np.testing.assert_array_equal(
            np.asarray(nib.load(root / "images" / name).dataobj), np.asarray(nib.load(again / "images" / name).dataobj)
        )


def test_volume_dataset_rejects_unknown_kind_and_spacing(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        make_volume_dataset(tmp_path, 1, kind="cells")
    with pytest.raises(ValueError, match="spacing"):
        make_volume_dataset(tmp_path, 1, spacing=(1.0, 1.0))
