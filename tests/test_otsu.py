"""Initial Otsu mask: agreement with scikit-image and scipy, polarity, batches, 3-D, the dictionary transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.data.synthetic import create_test_image_2d
from scipy import ndimage
from skimage.filters import threshold_otsu

from fanet_monai.data.transforms import LUMA_WEIGHTS, to_grayscale_torch
from fanet_monai.feedback.masks import start_mask
from fanet_monai.feedback.otsu import gaussian_blur_torch, opencv_gaussian_kernel, otsu_mask_torch, otsu_threshold_torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
GREY_LEVEL = 255.0 / 256  # one histogram bin of a 0..255 image


def synthetic(seed: int, noise: float, height: int = 64, width: int = 64) -> np.ndarray:
    """MONAI's synthetic disks image scaled to 0..255, ``(H, W)`` float32."""
    image, _ = create_test_image_2d(
        height, width, num_seg_classes=1, noise_max=noise, random_state=np.random.RandomState(seed)
    )
    return (image * 255).astype(np.float32)


def bimodal(seed: int, height: int = 48, width: int = 72) -> np.ndarray:
    """Two Gaussian intensity populations at random levels, clipped to 0..255, ``(H, W)`` float32."""
    rng = np.random.default_rng(seed)
    dark, bright = sorted(rng.uniform(20, 235, size=2))
    target = rng.random((height, width)) < rng.uniform(0.1, 0.6)
    image = np.where(target, bright, dark) + rng.normal(0, 12, size=(height, width))
    return np.clip(image, 0, 255).astype(np.float32)


def disk_image(height: int = 40, width: int = 56, bright: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.ogrid[:height, :width]
    disk = (rows - height // 2) ** 2 + (cols - width // 3) ** 2 <= 10**2
    image = np.where(disk, 200.0, 30.0) if bright else np.where(disk, 30.0, 200.0)
    return image.astype(np.float32), disk


TEST_IMAGES = [synthetic(seed, noise) for seed, noise in [(0, 0.0), (1, 0.2), (2, 0.5), (3, 1.0)]] + [
    bimodal(seed) for seed in range(4)
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(TEST_IMAGES)))
def test_threshold_matches_skimage(index: int, device: str) -> None:
    image = torch.from_numpy(TEST_IMAGES[index])[None, None].to(device)
    blurred = gaussian_blur_torch(image)
    ours = float(otsu_threshold_torch(blurred)[0])
    reference = float(threshold_otsu(blurred[0, 0].cpu().numpy(), nbins=256))
    assert abs(ours - reference) <= GREY_LEVEL
    # the mask of the full pipeline is the blurred image above that threshold
    mask = otsu_mask_torch(image)[0, 0].cpu().numpy()
    agree = (mask > 0) == (blurred[0, 0].cpu().numpy() > reference)
    assert agree.mean() >= 0.999


@pytest.mark.parametrize("device", DEVICES)
def test_batch_has_per_image_thresholds(device: str) -> None:
    images = torch.stack([torch.from_numpy(image) for image in TEST_IMAGES[4:]])[:, None].to(device)
    images[1] = images[1] * 0.5 + 100  # different ranges within the batch
    thresholds = otsu_threshold_torch(images)
    assert thresholds.shape == (len(images),) and thresholds.device.type == device
    single = torch.cat([otsu_threshold_torch(image[None]) for image in images])
    torch.testing.assert_close(thresholds, single, rtol=0, atol=0)
    assert len(set(thresholds.tolist())) == len(images)
    masks = otsu_mask_torch(images)
    assert masks.shape == (len(images), 1, *images.shape[2:]) and masks.device.type == device
    single_masks = torch.cat([otsu_mask_torch(image[None]) for image in images])
    torch.testing.assert_close(masks, single_masks, rtol=0, atol=0)


def test_blur_matches_opencv_kernel() -> None:
    """Default 5x5 blur = OpenCV's fixed kernel [1, 4, 6, 4, 1] / 16 with BORDER_REFLECT_101 (scipy's 'mirror')."""
    image = TEST_IMAGES[2]
    kernel = np.array([1, 4, 6, 4, 1]) / 16
    np.testing.assert_allclose(opencv_gaussian_kernel(5).numpy(), kernel)
    expected = ndimage.convolve1d(image, kernel, axis=0, mode="mirror")
    expected = ndimage.convolve1d(expected, kernel, axis=1, mode="mirror")
    blurred = gaussian_blur_torch(torch.from_numpy(image)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(blurred, expected, atol=1e-3)
    # an explicit sigma gives a sampled Gaussian of the requested width, OpenCV's sigma rule for sizes above 7
    sampled = np.exp(-0.5 * (np.arange(-2, 3) / 1.1) ** 2)
    np.testing.assert_allclose(opencv_gaussian_kernel(5, sigma=1.1).numpy(), sampled / sampled.sum(), rtol=1e-5)
    sampled = np.exp(-0.5 * (np.arange(-4, 5) / 1.7) ** 2)
    np.testing.assert_allclose(opencv_gaussian_kernel(9).numpy(), sampled / sampled.sum(), rtol=1e-5)
    assert torch.equal(gaussian_blur_torch(torch.ones(1, 1, 2, 3), kernel_size=5), torch.ones(1, 1, 2, 3))
    with pytest.raises(ValueError, match="odd"):
        opencv_gaussian_kernel(4)


@pytest.mark.parametrize("device", DEVICES)
def test_polarity_and_invert(device: str) -> None:
    image, disk = disk_image()
    x = torch.from_numpy(image)[None, None].to(device)
    mask = otsu_mask_torch(x)
    assert mask.dtype == torch.float32 and set(mask.unique().tolist()) == {0.0, 1.0}
    overlap = (mask[0, 0].cpu().numpy() > 0) == disk
    assert overlap.mean() > 0.98  # the bright disk is the foreground, up to the blurred rim
    torch.testing.assert_close(otsu_mask_torch(x, invert=True), 1 - mask)
    dark_image, _ = disk_image(bright=False)
    dark = otsu_mask_torch(torch.from_numpy(dark_image)[None, None].to(device), invert=True)
    torch.testing.assert_close(dark, mask)


@pytest.mark.parametrize("device", DEVICES)
def test_constant_image_gives_empty_mask(device: str) -> None:
    images = torch.stack([torch.full((1, 20, 30), 77.0), torch.from_numpy(disk_image(20, 30)[0])[None]]).to(device)
    thresholds = otsu_threshold_torch(images)
    assert thresholds[0] == 77.0
    for invert in (False, True):
        masks = otsu_mask_torch(images, invert=invert)
        assert masks[0].sum() == 0 and masks[1].sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_3d(device: str) -> None:
    depth, height, width = 24, 32, 28
    z, y, x = np.ogrid[:depth, :height, :width]
    ball = (z - 12) ** 2 + (y - 14) ** 2 + (x - 16) ** 2 <= 7**2
    rng = np.random.default_rng(0)
    volume = np.where(ball, 180.0, 40.0) + rng.normal(0, 10, ball.shape)
    mask = otsu_mask_torch(torch.from_numpy(volume)[None, None].to(device))
    assert mask.shape == (1, 1, depth, height, width) and mask.dtype == torch.float64
    assert ((mask[0, 0].cpu().numpy() > 0) == ball).mean() > 0.98


@pytest.mark.parametrize("device", DEVICES)
def test_rgb_batch_uses_luma(device: str) -> None:
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.uniform(0, 255, size=(3, 3, 32, 48)).astype(np.float32)).to(device)
    images[:, :, 8:20, 10:30] += 120  # a brighter patch in every image
    gray = to_grayscale_torch(images)
    weights = torch.tensor(LUMA_WEIGHTS, device=device).view(1, 3, 1, 1)
    torch.testing.assert_close(gray, (images * weights).sum(1, keepdim=True))
    torch.testing.assert_close(otsu_threshold_torch(images), otsu_threshold_torch(gray), rtol=0, atol=0)
    masks = otsu_mask_torch(images)
    assert masks.shape == (3, 1, 32, 48)
    assert masks[:, 0, 8:20, 10:30].mean() > 0.9
    # other channel counts use the channel mean
    torch.testing.assert_close(to_grayscale_torch(images[:, :2]), images[:, :2].mean(1, keepdim=True))


def test_uint8_input() -> None:
    image, _ = disk_image()
    x = torch.from_numpy(image.astype(np.uint8))[None, None]
    torch.testing.assert_close(otsu_mask_torch(x), otsu_mask_torch(x.float()))


def test_inverted_start_mask_finds_a_dark_target() -> None:
    image, disk = disk_image(bright=False)
    mask = start_mask(torch.from_numpy(image)[None, None], "otsu_inverted")
    assert mask.shape == (1, 1, *image.shape) and mask.dtype == torch.float32
    assert ((mask[0, 0] > 0).numpy() == disk).mean() > 0.98
    assert float(((start_mask(torch.from_numpy(image)[None, None], "otsu")[0, 0] > 0).numpy() == disk).mean()) < 0.02


def test_metatensor_batch_gives_plain_tensors() -> None:
    images = MetaTensor(torch.from_numpy(np.stack(TEST_IMAGES[:2]))[:, None], meta={"filename_or_obj": ["a", "b"]})
    masks, thresholds = otsu_mask_torch(images), otsu_threshold_torch(images)
    assert type(masks) is torch.Tensor and type(thresholds) is torch.Tensor
    torch.testing.assert_close(masks, otsu_mask_torch(images.as_tensor()), rtol=0, atol=0)
