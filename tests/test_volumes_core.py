"""Volumes ``(B, C, D, H, W)`` through the core pieces, on the same code path as images ``(B, C, H, W)``: FANet and
MixPool with ``spatial_dims=3``, the Otsu start mask, RLE, perturbed and degraded masks, the paper's metrics,
clDice / Betti-0, the early-stop rule and the refinement inferer. Small synthetic volumes (3³ to 32³) and narrow
networks, so the whole file runs in seconds on a CPU."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import skeletonize

from fanet_monai import FANet
from fanet_monai.data.transforms import LUMA_WEIGHTS
from fanet_monai.feedback.masks import feedback_mask, start_mask
from fanet_monai.feedback.otsu import gaussian_blur_torch, opencv_gaussian_kernel, otsu_mask_torch, otsu_threshold_torch
from fanet_monai.feedback.rle import RLEMask, rle_decode, rle_encode
from fanet_monai.feedback.sources import DEGRADATIONS, degrade_label, perturb_mask
from fanet_monai.inferers import IterativeRefinementInferer
from fanet_monai.inferers.passes import check_mask, converged, early_stop_passes
from fanet_monai.metrics import ALL_METRICS, PAPER_METRICS, segmentation_metrics
from fanet_monai.networks import MixPool, fuse_conv_bn, max_pool_to
from fanet_monai.topology import betti0, centerline_dice, connectivity_metrics

NARROW = (4, 8, 8, 8)  # narrow widths: a 3-D FANet small enough for CPU tests


def volume_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """``(B, C + 1, D, H, W)``: random image channels, then a binary feedback mask."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(shape[0], shape[1] - 1, *shape[2:], generator=g)
    mask = (torch.rand(shape[0], 1, *shape[2:], generator=g) > 0.7).float()
    return torch.cat([image, mask], dim=1)


def net3d(**kwargs) -> FANet:
    torch.manual_seed(0)
    return FANet(spatial_dims=3, in_channels=1, out_channels=1, channels=kwargs.pop("channels", NARROW), **kwargs)


# ------------------------------------------------------------------------------------------------------- network
@pytest.mark.parametrize(
    "shape, variant",
    [((2, 2, 32, 32, 32), "B4"), ((1, 2, 16, 32, 24), "B3"), ((1, 2, 17, 19, 23), "B4"), ((1, 2, 3, 5, 7), "B1")],
    ids=str,
)
def test_fanet_3d_forward_and_backward(shape, variant):
    net = net3d(variant=variant).train()
    x = volume_input(shape).requires_grad_()
    out = net(x)
    assert out.shape == (shape[0], 1, *shape[2:]) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in net.named_parameters():
        if ".attention_map." in name:  # the thresholded learned map gets no gradient (reference design)
            assert p.grad is None
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_fanet_3d_pads_each_axis_and_crops_back():
    """As in 2-D: each spatial size is padded to a multiple of 16 (replicate, split evenly) and cropped back."""
    net = net3d().eval()
    x = volume_input((1, 2, 14, 16, 15))
    padded = F.pad(x, [0, 1, 0, 0, 1, 1], mode="replicate")  # W 15 -> 16 (0, 1), H none, D 14 -> 16 (1, 1)
    with torch.no_grad():
        assert torch.allclose(net(x), net(padded)[:, :, 1:-1, :, :-1], atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [0, 1, 4])
def test_fanet_rejects_spatial_dims_other_than_2_and_3(spatial_dims):
    with pytest.raises(ValueError, match="spatial_dims must be 2 .* or 3"):
        FANet(spatial_dims=spatial_dims, in_channels=1, channels=NARROW)
    with pytest.raises(ValueError, match="spatial_dims"):
        MixPool(spatial_dims, 4)


def test_narrow_widths_are_checked_up_front():
    # the last decoder stage is channels[0] // 2 wide: with MixPool's feature branch it must be even
    with pytest.raises(ValueError, match=r"decoder4 \(1\)"):
        FANet(spatial_dims=3, in_channels=1, channels=(2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"decoder4 \(3\).*channels\[0\] a multiple of 4"):
        FANet(spatial_dims=3, in_channels=1, channels=(6, 8, 8, 8))
    with pytest.raises(ValueError, match=r"encoder2 \(3\).*decoder2 \(3\)"):
        FANet(spatial_dims=3, in_channels=1, channels=(4, 3, 8, 8))
    x = volume_input((1, 2, 16, 16, 16))
    for net in (  # the narrowest networks the constructor allows
        net3d(channels=(4, 2, 2, 2)),
        net3d(channels=(2, 2, 2, 2), variant="B1"),  # no MixPool
        net3d(channels=(2, 2, 2, 2), mixpool_feature_branch=False),
    ):
        with torch.no_grad():
            assert net.eval()(x).shape == (1, 1, 16, 16, 16)


def test_max_pool_to_3d():
    mask = (torch.rand(2, 1, 8, 12, 6, generator=torch.Generator().manual_seed(0)) > 0.9).float()
    assert torch.equal(max_pool_to(mask, [4, 3, 6]), F.max_pool3d(mask, kernel_size=(2, 4, 1)))
    assert torch.equal(max_pool_to(mask, [8, 12, 6]), mask)
    with pytest.raises(ValueError, match="integer multiple"):
        max_pool_to(mask, [3, 3, 6])
    with pytest.raises(ValueError, match="2 or 3 spatial dims"):
        max_pool_to(mask, [4, 3])  # a 2-D size for a volume
    with pytest.raises(ValueError, match="2 or 3 spatial dims"):
        max_pool_to(mask[:, :, 0, 0], [3])  # 1-D


def test_mixpool_3d_attention_is_union_of_external_and_learned_masks():
    torch.manual_seed(0)
    block = MixPool(3, 4).eval()
    features = torch.randn(1, 4, 4, 4, 4)
    external = torch.zeros(1, 1, 8, 8, 8)
    external[..., :4, :4, :4] = 1  # after 2x2x2 max pooling: the first 2x2x2 octant
    with torch.no_grad():
        block.attention_map[1].conv.bias.fill_(-1e4)  # learned map all zero
        out = block(features, external)
        expected_mask = torch.zeros(1, 1, 4, 4, 4)
        expected_mask[..., :2, :2, :2] = 1
        assert torch.equal(block.masked_branch(features * expected_mask), out[:, :2])
        assert torch.equal(block.feature_branch(features), out[:, 2:])
        block.attention_map[1].conv.bias.fill_(1e4)  # learned map all one: the union is all one
        assert torch.equal(block(features, external)[:, :2], block.masked_branch(features))


@pytest.mark.slow
def test_torchscript_trace_and_script_3d(tmp_path):
    """As in 2-D: a trace reproduces the network at the traced size (e.g. sliding windows), a script at any size."""
    net = net3d().eval()
    x, odd = volume_input((2, 2, 16, 16, 16)), volume_input((1, 2, 17, 18, 19), seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, module in {"traced": torch.jit.trace(net, x), "scripted": torch.jit.script(net)}.items():
            torch.jit.save(module, tmp_path / name)
    traced, scripted = torch.jit.load(tmp_path / "traced"), torch.jit.load(tmp_path / "scripted")
    volume = torch.from_numpy(ball_volume(0, shape=(20, 16, 14))[0])[None, None] / 255
    windows = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2)
    inferer = IterativeRefinementInferer(num_passes=2, inner=windows)
    with torch.no_grad():
        assert torch.equal(traced(x), net(x))
        assert torch.equal(scripted(odd), net(odd))
        assert torch.allclose(inferer(volume, traced), inferer(volume, net), atol=1e-5)


def test_fuse_conv_bn_3d():
    net = net3d().train()
    with torch.no_grad():
        net(volume_input((2, 2, 16, 16, 16)))  # non-trivial running statistics
        x = volume_input((1, 2, 16, 16, 16), seed=3)
        assert torch.allclose(fuse_conv_bn(net.eval())(x), net(x), atol=1e-4)


# ------------------------------------------------------------------------------------------------ start mask
def ball_volume(seed: int, shape: tuple[int, int, int] = (20, 24, 28), noise: float = 15.0) -> tuple[np.ndarray, ...]:
    """A bright ball on a dark background plus Gaussian noise, float32 ``(D, H, W)``, and the ball."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = [s // 2 + int(rng.integers(-2, 3)) for s in shape]
    ball = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= int(rng.integers(5, 8)) ** 2
    dark, bright = rng.uniform(20, 100), rng.uniform(150, 235)
    volume = np.where(ball, bright, dark) + rng.normal(0, noise, shape)
    return volume.astype(np.float32), ball


def test_blur_3d_is_the_2d_kernel_along_every_axis():
    volume = np.random.default_rng(0).random((9, 12, 10))
    expected = volume
    for axis in range(3):  # scipy's "mirror" is OpenCV's BORDER_REFLECT_101
        expected = ndimage.convolve1d(expected, opencv_gaussian_kernel(5).double().numpy(), axis=axis, mode="mirror")
    blurred = gaussian_blur_torch(torch.from_numpy(volume)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(blurred, expected, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_otsu_on_volume_matches_skimage(seed):
    volume, ball = ball_volume(seed, noise=10.0 + 15 * seed)
    blurred = gaussian_blur_torch(torch.from_numpy(volume)[None, None])
    ours = float(otsu_threshold_torch(blurred)[0])
    reference = float(threshold_otsu(blurred[0, 0].numpy(), nbins=256))
    bin_width = float(blurred.max() - blurred.min()) / 256
    assert abs(ours - reference) <= bin_width
    mask = start_mask(torch.from_numpy(volume)[None, None], "otsu")
    assert mask.shape == (1, 1, *volume.shape) and mask.dtype == torch.float32
    assert torch.equal(mask[0, 0] > 0, blurred[0, 0].double() > ours)
    if seed == 0:  # low noise: the mask is the ball
        assert ((mask[0, 0].numpy() > 0) == ball).mean() > 0.98


def test_otsu_threshold_is_per_volume():
    a, b = ball_volume(0)[0], ball_volume(1)[0] * 0.1 + 500  # other intensity ranges
    batch = torch.from_numpy(np.stack([a, b]))[:, None]
    masks = start_mask(batch, "otsu")
    for i in range(2):
        assert torch.equal(masks[i : i + 1], start_mask(batch[i : i + 1], "otsu"))
    assert otsu_threshold_torch(batch).shape == (2,)


def test_start_mask_kinds_on_volumes():
    volume = torch.from_numpy(ball_volume(2)[0])[None, None].repeat(2, 1, 1, 1, 1)
    volume[1] = 7.0  # a constant volume: empty in both polarities
    shape = (2, 1, *volume.shape[2:])
    otsu, inverted = start_mask(volume, "otsu"), start_mask(volume, "otsu_inverted")
    assert otsu.shape == inverted.shape == shape
    assert torch.equal(inverted[0], 1 - otsu[0]) and otsu[0].sum() > 0
    assert otsu[1].sum() == 0 and inverted[1].sum() == 0
    assert torch.equal(start_mask(volume, "empty"), torch.zeros(shape))
    assert torch.equal(start_mask(volume, "full"), torch.ones(shape))
    # integer CT-like volumes (Hounsfield units) keep their dtype, like 2-D images
    ct = (volume[:1] * 10 - 1000).to(torch.int16)
    assert start_mask(ct, "otsu").dtype == torch.int16
    assert torch.equal(start_mask(ct, "otsu").float(), otsu_mask_torch(ct.float()))


def test_rgb_volume_uses_luma():
    rng = np.random.default_rng(1)
    rgb = torch.from_numpy(rng.uniform(0, 255, size=(1, 3, 8, 12, 10)).astype(np.float32))
    rgb[..., 2:6, 3:9, 2:8] += 120
    gray = (rgb * torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1, 1)).sum(dim=1, keepdim=True)
    assert torch.equal(start_mask(rgb, "otsu"), start_mask(gray, "otsu"))


# ---------------------------------------------------------------------------------------------------------- RLE
def _masks_3d() -> dict[str, np.ndarray | torch.Tensor]:
    rng = np.random.default_rng(0)
    mask = rng.random((1, 9, 12, 10)) > 0.6
    blocky = np.zeros((1, 16, 16, 16), np.uint8)
    blocky[0, 2:9, 3:12, 4:5] = 1
    return {
        "c-order": mask, "fortran": np.asfortranarray(mask), "strided": np.repeat(mask, 2, axis=2)[:, :, ::2],
        "transposed": mask.transpose(0, 3, 1, 2), "tensor-permuted": torch.from_numpy(mask).permute(0, 2, 3, 1),
        "tensor-float": torch.from_numpy(blocky).float(), "blocky-uint8": blocky,
        "empty": np.zeros((1, 4, 5, 6), bool), "full": np.ones((1, 4, 5, 6), bool),
    }


@pytest.mark.parametrize("name", list(_masks_3d()))
def test_rle_round_trips_3d_masks(name):
    mask = _masks_3d()[name]
    expected = np.asarray(mask) != 0
    rle = rle_encode(mask)
    assert rle.shape == expected.shape and rle.foreground == expected.sum()
    assert np.array_equal(rle_decode(rle, dtype=bool), expected)
    assert rle_encode(np.ascontiguousarray(expected)) == rle  # memory layout never changes the code
    assert RLEMask.from_dict(rle.to_dict()) == rle


# --------------------------------------------------------------------------------- perturbed and degraded masks
def blob_volume() -> np.ndarray:
    """``(1, D, H, W)`` uint8: three separate boxes."""
    mask = np.zeros((1, 16, 20, 18), np.uint8)
    mask[0, 2:7, 2:8, 2:7] = 1
    mask[0, 9:14, 10:18, 3:9] = 1
    mask[0, 3:12, 3:6, 12:16] = 1
    return mask


def test_perturb_mask_3d():
    mask = blob_volume()
    dilated3 = ndimage.binary_dilation(mask[0], iterations=3)  # 6-connected structure, as perturb_mask's
    rng = np.random.RandomState(0)
    grew = shrank = 0
    for _ in range(30):
        out = perturb_mask(mask, rng, max_radius=3, drop_probability=0.3)
        assert out.shape == mask.shape and out.dtype == np.uint8
        assert (out[0] <= dilated3).all()
        grew += int((out[0] > mask[0]).any())
        shrank += int((out[0] <= mask[0]).all() and out.sum() < mask.sum())
    assert grew and shrank  # both erosion and dilation are drawn
    counts = {ndimage.label(perturb_mask(mask, np.random.RandomState(s))[0])[1] for s in range(30)}
    assert min(counts) < 3  # some draws drop a blob


def test_degrade_label_3d():
    label = blob_volume()
    true = label[0] > 0
    rng = np.random.RandomState(0)
    for kind in DEGRADATIONS:
        out = degrade_label(label, rng, kind=kind)
        assert out.shape == label.shape and out.dtype == np.uint8, kind
    eroded = degrade_label(label, rng, kind="eroded")[0].astype(bool)
    dilated = degrade_label(label, rng, kind="dilated")[0].astype(bool)
    assert eroded.sum() < true.sum() and not (eroded & ~true).any()
    assert dilated.sum() > true.sum() and not (true & ~dilated).any()
    # the blobs are boxes: their bounding boxes are themselves; "polygon" is a box per component in 3-D
    assert np.array_equal(degrade_label(label, rng, kind="box")[0].astype(bool), true)
    assert np.array_equal(degrade_label(label, rng, kind="polygon")[0].astype(bool), true)
    dropped = [ndimage.label(degrade_label(label, np.random.RandomState(s), kind="components_dropped")[0])[1]
               for s in range(5)]
    assert set(dropped) == {2}  # round(0.3 * 3) = 1 of 3 blobs goes


# ------------------------------------------------------------------------------------------- metrics, topology
def test_paper_metrics_on_volumes_by_hand():
    target = torch.zeros(2, 1, 4, 4, 4)
    target[:, :, :, :2, :2] = 1  # 16 voxels
    pred = torch.zeros_like(target)
    pred[0, :, :2, :2, :2] = 1  # 8 of them: TP 8, FN 8, FP 0, TN 48
    pred[1] = target[1]
    values = segmentation_metrics(pred, target)
    expected = {"jaccard": 0.5, "f1": 2 / 3, "recall": 0.5, "precision": 1.0, "specificity": 1.0,
                "accuracy": 56 / 64, "f2": 40 / 72}
    assert list(values) == list(PAPER_METRICS)
    for name, value in expected.items():
        assert values[name].tolist() == pytest.approx([value, 1.0]), name
    empty = segmentation_metrics(torch.zeros(1, 1, 3, 4, 5), torch.zeros(1, 1, 3, 4, 5), ALL_METRICS)
    assert {k: v.item() for k, v in empty.items()} == {**dict.fromkeys(PAPER_METRICS + ("cldice",), 1.0),
                                                      "betti0_error": 0.0, "components": 0.0, "hd95": 0.0,
                                                      "surface_dice": 1.0}


def line_and_broken_line() -> tuple[np.ndarray, np.ndarray]:
    """A straight 16-voxel line along D and the same line with a 4-voxel gap (12 voxels, two pieces)."""
    line = np.zeros((20, 9, 9), bool)
    line[2:18, 4, 4] = True
    broken = line.copy()
    broken[8:12] = False
    return line, broken


def test_betti0_uses_26_connectivity_in_3d():
    two = np.zeros((8, 8, 8), bool)
    two[0:2, 0:2, 0:2] = two[4:6, 4:6, 4:6] = True
    assert betti0(two) == 2
    corner = np.zeros((4, 4, 4), bool)
    corner[0:2, 0:2, 0:2] = corner[2:4, 2:4, 2:4] = True  # the cubes share one corner only
    assert betti0(corner) == 1 and ndimage.label(corner)[1] == 2  # 26- vs 6-connectivity
    edge = np.zeros((4, 4, 4), bool)
    edge[0:2, 0:2, :] = edge[2:4, 2:4, :] = True  # sharing an edge
    assert betti0(edge) == 1


def test_cldice_3d_by_hand():
    tube = np.zeros((20, 9, 9), bool)
    tube[2:18, 3:6, 3:6] = True
    assert centerline_dice(tube, tube) == 1.0
    line, broken = line_and_broken_line()
    # skeletons of a line are the lines: Tprec = 12 / 12, Tsens = 12 / 16, clDice = 2 * 0.75 / 1.75 = 6 / 7
    assert centerline_dice(broken, line) == pytest.approx(6 / 7)
    # the tube's skeleton is its centre line, the line itself: a centre line scores 1 against the tube
    assert np.array_equal(skeletonize(tube), line)
    assert centerline_dice(line, tube) == 1.0
    assert centerline_dice(broken, tube) == pytest.approx(6 / 7)


def test_connectivity_metrics_on_a_batch_of_volumes():
    line, broken = line_and_broken_line()
    pred = torch.from_numpy(np.stack([broken, line]))[:, None].float()
    target = torch.from_numpy(np.stack([line, line]))[:, None].float()
    values = connectivity_metrics(pred, target)
    assert values["cldice"].tolist() == pytest.approx([6 / 7, 1.0])
    assert values["betti0_error"].tolist() == [1.0, 0.0]
    assert values["components"].tolist() == [2.0, 1.0]
    assert segmentation_metrics(pred, target, ("cldice", "recall"))["recall"].tolist() == pytest.approx([0.75, 1.0])


# ------------------------------------------------------------------------------------- early stop and inferer
def test_converged_early_stop_and_check_mask_on_volumes():
    previous = torch.zeros(2, 1, 4, 4, 4, dtype=torch.bool)
    current = previous.clone()
    current[0, 0, 0, 0, :2] = True  # 2 of 64 voxels change in volume 0
    current[1, 0, 1, :3, 0] = True  # 3 of 64 in volume 1
    assert converged(current, previous, 2 / 64).tolist() == [True, False]
    assert converged(current, previous, 3 / 64).tolist() == [True, True]
    assert converged(current, previous, 0.0).tolist() == [False, False]
    binary = torch.stack([previous, current, current])  # (passes, B, 1, D, H, W)
    assert early_stop_passes(binary, 0.0).tolist() == [3, 3]
    assert early_stop_passes(binary, 2 / 64).tolist() == [2, 3]
    images = torch.zeros(2, 1, 4, 4, 4)
    check_mask(images, None)
    check_mask(images, previous)
    for bad in (previous[:, :, 0], previous[:1], torch.cat([previous, previous], dim=1)):
        with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
            check_mask(images, bad)


def test_refinement_on_a_volume_is_the_manual_feedback_loop():
    """Otsu start on the volume, then binarized feedback: the inferer equals the hand-written loop; sliding 16³
    windows and early stop work on volumes too."""
    net = net3d().eval()
    volume = torch.from_numpy(ball_volume(0, shape=(20, 16, 14))[0])[None, None] / 255
    with torch.no_grad():
        mask = start_mask(volume, "otsu")
        expected = []
        for _ in range(3):
            expected.append(net(torch.cat([volume, mask], dim=1)))
            mask = feedback_mask(expected[-1])
        result = IterativeRefinementInferer(num_passes=3).refine(volume, net)
        assert all(torch.equal(a, b) for a, b in zip(result.passes, expected))
        assert result.num_passes.tolist() == [3]
        windows = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2)
        stopped = IterativeRefinementInferer(num_passes=4, inner=windows, early_stop=True, tolerance=1.0)
        out = stopped.refine(volume.repeat(2, 1, 1, 1, 1), net)
        assert out.logits.shape == (2, 1, 20, 16, 14) and out.num_passes.tolist() == [2, 2]
