"""FANet's initial mask: grayscale -> 5x5 Gaussian blur -> Otsu threshold, brighter than the threshold = foreground.

Everything runs batched in torch on the images' own device (CPU or CUDA, no host round trip), so the CPU data
pipeline (:class:`~fanet_monai.feedback.transforms.FeedbackMaskd`) and a GPU inferer produce exactly the same mask
for the same image.

Conventions (fixed, and shared by every function here):

- **Grayscale** (:func:`fanet_monai.data.transforms.to_grayscale_torch`): 3-channel images (RGB order, MONAI's
  convention) use the ITU-R BT.601 luma weights ``0.299 R + 0.587 G + 0.114 B``, as OpenCV's
  ``cvtColor(..., COLOR_RGB2GRAY)`` used by the FANet reference code (note that ``skimage.color.rgb2gray`` uses
  BT.709 weights ``0.2125, 0.7154, 0.0721`` instead); any other channel count (1 for CT or MR) uses the mean over
  channels.
- **Blur**: the kernel of OpenCV's ``GaussianBlur(img, (k, k), 0)``: with ``sigma=None`` and ``k`` in
  ``{1, 3, 5, 7}`` OpenCV's fixed kernels (for ``k = 5`` the binomial ``[1, 4, 6, 4, 1] / 16``), otherwise a sampled
  Gaussian of width ``k`` with ``sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8`` (1.1 for ``k = 5``) or the given ``sigma``.
  Borders are mirrored without repeating the edge pixel (OpenCV's default ``BORDER_REFLECT_101``). The blur is
  computed in floating point; OpenCV would round an 8-bit image back to integers.
- **Volumes**: ``(B, C, D, H, W)`` take the same path as images ``(B, C, H, W)``: the same 1-D kernel is applied
  along every spatial axis (D, H and W), and the threshold is computed per volume over all its voxels.
- **Otsu**: per image, a histogram with ``bins`` equal bins over the image's own ``[min, max]`` range; the threshold
  is the centre of the bin that maximises the between-class variance (the first one on ties), exactly the recipe of
  ``skimage.filters.threshold_otsu`` for floating-point images. A constant image gets its own value as threshold,
  so that its mask (``image > threshold``) is empty.
"""

from __future__ import annotations

import torch
from monai.networks.layers import separable_filtering
from monai.networks.layers.convutils import gaussian_1d

from fanet_monai.data.transforms import to_grayscale_torch

__all__ = ["gaussian_blur_torch", "opencv_gaussian_kernel", "otsu_mask_torch", "otsu_threshold_torch"]

# OpenCV's getGaussianKernel uses these fixed kernels when sigma <= 0 and the size is 1, 3, 5 or 7.
_OPENCV_FIXED_KERNELS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}


def opencv_gaussian_kernel(kernel_size: int = 5, sigma: float | None = None) -> torch.Tensor:
    """1-D Gaussian kernel as OpenCV's ``getGaussianKernel(kernel_size, sigma or 0)``.

    Args:
        kernel_size: odd, positive kernel width.
        sigma: standard deviation; ``None`` (or ``<= 0``) selects OpenCV's default for ``kernel_size`` (its fixed
            kernels for sizes 1, 3, 5 and 7, else ``sigma = 0.3 * ((kernel_size - 1) / 2 - 1) + 0.8``).

    Returns:
        float32 tensor of shape ``(kernel_size,)`` summing to 1.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}.")
    if sigma is None or sigma <= 0:
        if kernel_size in _OPENCV_FIXED_KERNELS:
            return torch.tensor(_OPENCV_FIXED_KERNELS[kernel_size], dtype=torch.float32)
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    if kernel_size == 1:
        return torch.ones(1)
    half = kernel_size // 2
    # `truncated` such that MONAI's tail = int(sigma * truncated + 0.5) equals `half`
    kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=half / sigma, approx="sampled", normalize=True)
    if kernel.numel() != kernel_size:  # pragma: no cover - guards against a change of MONAI's rounding
        raise RuntimeError(f"expected a kernel of width {kernel_size}, MONAI returned {kernel.numel()}.")
    return kernel


def gaussian_blur_torch(images: torch.Tensor, kernel_size: int = 5, sigma: float | None = None) -> torch.Tensor:
    """Separable Gaussian blur of every channel, borders mirrored as OpenCV's ``BORDER_REFLECT_101``.

    Args:
        images: ``(B, C, *spatial)`` with 1, 2 or 3 spatial dims, floating point, any device.
        kernel_size: odd kernel width along every spatial dim (1 = no blur).
        sigma: see :func:`opencv_gaussian_kernel`.

    Returns:
        tensor of the same shape, dtype and device. Spatial sizes not larger than ``kernel_size // 2`` cannot be
        mirrored and fall back to edge replication.
    """
    kernel = opencv_gaussian_kernel(kernel_size, sigma).to(device=images.device, dtype=images.dtype)
    if kernel_size == 1:
        return images
    mode = "reflect" if min(images.shape[2:]) > kernel_size // 2 else "replicate"
    return separable_filtering(images, kernel, mode=mode)


def otsu_threshold_torch(images: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu threshold of every image of a batch, computed on the images' device.

    Args:
        images: ``(B, C, *spatial)``; converted to grayscale first (see :func:`to_grayscale_torch`; a single channel
            is used as it is). No blur is applied here.
        bins: number of histogram bins over each image's own ``[min, max]`` (at least 2).

    Returns:
        float64 tensor ``(B,)`` of thresholds in the grayscale's intensity units; ``gray > threshold`` is the
        foreground. A constant image gets its value, hence an empty mask.
    """
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}.")
    gray = to_grayscale_torch(images).flatten(1).to(torch.float64)  # (B, N)
    batch, npix = gray.shape
    if npix == 0:
        raise ValueError("images have no pixels.")
    low = gray.amin(dim=1, keepdim=True)  # (B, 1)
    width = (gray.amax(dim=1, keepdim=True) - low) / bins  # (B, 1)
    constant = width[:, 0] <= 0
    safe_width = torch.where(constant[:, None], torch.ones_like(width), width)

    # histogram of all images at once: offset every image's bin indices by b * bins
    index = ((gray - low) / safe_width).floor().long().clamp_(0, bins - 1)
    index += torch.arange(batch, device=gray.device)[:, None] * bins
    counts = torch.bincount(index.flatten(), minlength=batch * bins).view(batch, bins).to(torch.float64)
    centres = low + (torch.arange(bins, device=gray.device, dtype=torch.float64) + 0.5) * width  # (B, bins)

    # class weights and means for "bins <= k" versus "bins > k"; the min (max) falls in the first (last) bin,
    # so both weights are positive wherever they are used below for non-constant images
    weight_low = counts.cumsum(dim=1)
    weight_high = counts.flip(1).cumsum(dim=1).flip(1)
    mass = counts * centres
    mean_low = mass.cumsum(dim=1) / weight_low
    mean_high = mass.flip(1).cumsum(dim=1).flip(1) / weight_high
    between = weight_low[:, :-1] * weight_high[:, 1:] * (mean_low[:, :-1] - mean_high[:, 1:]) ** 2  # (B, bins - 1)
    best = torch.nan_to_num(between, nan=-1.0).argmax(dim=1, keepdim=True)
    threshold = centres.gather(1, best)[:, 0]
    return torch.where(constant, low[:, 0], threshold)


def otsu_mask_torch(
    images: torch.Tensor, blur_kernel: int = 5, sigma: float | None = None, invert: bool = False, bins: int = 256
) -> torch.Tensor:
    """FANet's initial mask of a batch: grayscale, Gaussian blur, Otsu threshold per image.

    Args:
        images: ``(B, C, *spatial)`` with 1, 2 or 3 spatial dims, any numeric dtype, any device.
        blur_kernel: odd width of the Gaussian kernel (5 as in the paper; 1 = no blur).
        sigma: Gaussian standard deviation; ``None`` = OpenCV's default for ``blur_kernel`` (see module docstring).
        invert: ``False``: pixels brighter than the threshold are foreground (the paper). ``True``: pixels darker
            than or equal to it, for dark targets. Either way a constant image gives an empty mask.
        bins: histogram bins of the Otsu threshold.

    Returns:
        plain tensor ``(B, 1, *spatial)`` of 0/1 in float32 (float64 for float64 input), on the input's device.
    """
    gray = gaussian_blur_torch(to_grayscale_torch(images), kernel_size=blur_kernel, sigma=sigma)
    shape = (-1, *([1] * (gray.ndim - 1)))
    threshold = otsu_threshold_torch(gray, bins=bins).view(shape)
    foreground = gray.to(torch.float64) > threshold
    if invert:
        flat = gray.flatten(1)
        not_constant = (flat.amax(dim=1) > flat.amin(dim=1)).view(shape)
        foreground = ~foreground & not_constant  # a constant image has no target in either polarity
    return foreground.to(gray.dtype)
