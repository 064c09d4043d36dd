"""IterativeRefinementInferer: exact pass-by-pass results on stub networks, early stop, inner inferers, TorchScript."""

from __future__ import annotations

import warnings
from typing import List

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from fanet_monai.feedback.otsu import otsu_mask_torch
from fanet_monai.inferers import IterativeRefinementInferer
from fanet_monai.networks import FANet

SMALL = (8, 16, 16, 16)  # narrow FANet widths for fast tests


class DilationStub(torch.nn.Module):
    """Dilates the mask channel by one pixel per pass: logits = +10 where ``max_pool3x3(mask) > 0.5`` else -10.

    With ``bounded=True`` the dilation is confined to the region where image channel 0 is > 0.5, so it converges.
    Records the batch size of every call.
    """

    def __init__(self, bounded: bool = False) -> None:
        super().__init__()
        self.bounded = bounded
        self.batch_sizes: List[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(int(x.shape[0]))
        grown = F.max_pool2d(x[:, -1:], kernel_size=3, stride=1, padding=1) > 0.5
        if self.bounded:
            grown = grown & (x[:, :1] > 0.5)
        return torch.where(grown, 10.0, -10.0).to(x.dtype)


class XorStub(torch.nn.Module):
    """Pointwise: the next binarized mask is ``(image > 0) XOR mask``. Invariant to windowing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sign = torch.where(x[:, :1] > 0, 1.0, -1.0)
        return 10.0 * sign * (1.0 - 2.0 * x[:, -1:])


class LinearStub(torch.nn.Module):
    """Pointwise ``logits = 3 * mask - 1``; exposes soft versus binary feedback."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * x[:, -1:] - 1.0


def seed_mask(batch: int, h: int, w: int, points: list[tuple[int, int]]) -> torch.Tensor:
    mask = torch.zeros(batch, 1, h, w)
    for b, (r, c) in enumerate(points):
        mask[b, 0, r, c] = 1.0
    return mask


def square(h: int, w: int, r: int, c: int, radius: int) -> torch.Tensor:
    out = torch.zeros(h, w, dtype=torch.bool)
    out[max(r - radius, 0) : r + radius + 1, max(c - radius, 0) : c + radius + 1] = True
    return out


@pytest.mark.parametrize("num_passes", [1, 2, 3, 7])
def test_dilation_grows_exact_square(num_passes):
    h, w = 15, 17
    points = [(7, 8), (1, 2)]  # centre, and near a corner (square clipped at the border)
    start = seed_mask(2, h, w, points)
    inferer = IterativeRefinementInferer(num_passes=num_passes, start_mask=lambda images: start)
    logits = inferer(torch.zeros(2, 3, h, w), DilationStub())
    assert logits.shape == (2, 1, h, w) and logits.dtype == torch.float32
    for b, (r, c) in enumerate(points):
        assert torch.equal(logits[b, 0] > 0, square(h, w, r, c, num_passes))
    result = inferer.refine(torch.zeros(2, 3, h, w), DilationStub())
    assert result.num_passes.tolist() == [num_passes, num_passes] and len(result.seconds) == num_passes
    assert torch.equal(result.logits, logits) and len(result.passes) == num_passes


def test_start_mask_tensor_is_not_modified():
    start = seed_mask(1, 9, 9, [(4, 4)])
    before = start.clone()
    IterativeRefinementInferer(num_passes=3, start_mask=lambda images: start)(torch.zeros(1, 1, 9, 9), DilationStub())
    assert torch.equal(start, before)


def test_return_all_passes_stacks_every_pass():
    h = w = 11
    start = seed_mask(2, h, w, [(5, 5), (0, 0)])
    inferer = IterativeRefinementInferer(num_passes=4, start_mask=lambda images: start, return_all_passes=True)
    passes = inferer(torch.zeros(2, 1, h, w), DilationStub())
    assert passes.shape == (4, 2, 1, h, w)
    for k in range(4):
        assert torch.equal(passes[k, 0, 0] > 0, square(h, w, 5, 5, k + 1))
        assert torch.equal(passes[k, 1, 0] > 0, square(h, w, 0, 0, k + 1))


def test_iterate_yields_independent_tensors():
    start = seed_mask(1, 9, 9, [(4, 4)])
    inferer = IterativeRefinementInferer(num_passes=3, start_mask=lambda images: start)
    steps = list(inferer.iterate(torch.zeros(1, 1, 9, 9), DilationStub()))
    assert len(steps) == 3
    assert [int((p > 0).sum()) for p, _ in steps] == [9, 25, 49]
    assert [used.tolist() for _, used in steps] == [[1], [2], [3]]


def _bounded_batch(h: int = 16, w: int = 16):
    """Two images: dilation confined to squares of half-width 2 and 5 around the seed (8, 8)."""
    images = torch.zeros(2, 1, h, w)
    images[0, 0] = square(h, w, 8, 8, 2).float()
    images[1, 0] = square(h, w, 8, 8, 5).float()
    return images, seed_mask(2, h, w, [(8, 8), (8, 8)])


def test_early_stop_stops_exactly_when_the_mask_stops_changing():
    images, start = _bounded_batch()
    full_stub, early_stub = DilationStub(bounded=True), DilationStub(bounded=True)
    full = IterativeRefinementInferer(num_passes=10, start_mask=lambda x: start)(images, full_stub)
    early = IterativeRefinementInferer(num_passes=10, start_mask=lambda x: start, early_stop=True)
    refinement = early.refine(images, early_stub)
    result = refinement.logits
    # image 0 fills its region at pass 2, unchanged at pass 3; image 1 fills at pass 5, unchanged at pass 6
    assert refinement.num_passes.tolist() == [3, 6]
    assert early_stub.batch_sizes == [2, 2, 2, 1, 1, 1]
    assert full_stub.batch_sizes == [2] * 10
    assert torch.equal(result, full)


def test_early_stop_with_all_passes_repeats_final_logits():
    images, start = _bounded_batch()
    inferer = IterativeRefinementInferer(
        num_passes=8, start_mask=lambda x: start, early_stop=True, return_all_passes=True
    )
    passes = inferer(images, DilationStub(bounded=True))
    reference = IterativeRefinementInferer(num_passes=8, start_mask=lambda x: start, return_all_passes=True)
    assert passes.shape == (8, 2, 1, 16, 16)
    assert torch.equal(passes, reference(images, DilationStub(bounded=True)))
    for k in range(3, 8):
        assert torch.equal(passes[k, 0], passes[2, 0])
    for k in range(6, 8):
        assert torch.equal(passes[k, 1], passes[5, 1])


def test_early_stop_all_finished_stops_calling_network():
    images, start = _bounded_batch()
    stub = DilationStub(bounded=True)
    inferer = IterativeRefinementInferer(num_passes=10, start_mask=lambda x: start, early_stop=True, tolerance=1.0)
    # tolerance 1.0: every image counts as converged at the first comparison (pass 2)
    assert inferer.refine(images, stub).num_passes.tolist() == [2, 2]
    assert stub.batch_sizes == [2, 2]


@pytest.mark.parametrize("changed_pixels, expected", [(0, 9), (1, 3), (2, 2), (1.5, 3)])
def test_early_stop_tolerance_fraction(changed_pixels, expected):
    # dilation confined to row 1 of a 3x11 image from a seed at column 2: pass k covers columns
    # max(2 - k, 0) .. k + 2, so passes 2, 3, ..., 8 add 2, 1, ..., 1 pixels and pass 9 adds none
    h, w = 3, 11
    images = torch.zeros(1, 1, h, w)
    images[0, 0, 1] = 1.0
    start = seed_mask(1, h, w, [(1, 2)])
    inferer = IterativeRefinementInferer(
        num_passes=10, start_mask=lambda x: start, early_stop=True, tolerance=changed_pixels / (h * w)
    )
    assert inferer.refine(images, DilationStub(bounded=True)).num_passes.tolist() == [expected]


def test_early_stop_single_pass():
    inferer = IterativeRefinementInferer(num_passes=1, start_mask="empty", early_stop=True)
    assert inferer.refine(torch.zeros(3, 1, 8, 8), DilationStub()).num_passes.tolist() == [1, 1, 1]


def test_binary_versus_probability_feedback():
    start = torch.full((1, 1, 4, 4), 0.5)
    x = torch.zeros(1, 2, 4, 4)
    binary = IterativeRefinementInferer(num_passes=3, start_mask=lambda i: start, return_all_passes=True)
    soft = IterativeRefinementInferer(
        num_passes=3, start_mask=lambda i: start, feedback="probability", return_all_passes=True
    )
    out_b, out_s = binary(x, LinearStub()), soft(x, LinearStub())
    # binary: logits 0.5 -> mask 1 -> logits 2 -> mask 1 -> logits 2
    assert torch.allclose(out_b[:, 0, 0, 0, 0], torch.tensor([0.5, 2.0, 2.0]))
    m, expected = 0.5, []
    for _ in range(3):
        logit = 3.0 * m - 1.0
        expected.append(logit)
        m = float(torch.sigmoid(torch.tensor(logit)))
    assert torch.allclose(out_s[:, 0, 0, 0, 0], torch.tensor(expected))


def test_threshold_sets_binary_feedback():
    start = torch.full((1, 1, 4, 4), 0.5)
    inferer = IterativeRefinementInferer(num_passes=2, start_mask=lambda i: start, threshold=0.7)
    # pass 1: logits 0.5, sigmoid 0.62 < 0.7 -> mask 0 -> pass 2 logits -1
    assert torch.allclose(inferer(torch.zeros(1, 1, 4, 4), LinearStub()), torch.full((1, 1, 4, 4), -1.0))


def test_inner_sliding_window_matches_whole_image():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 2, 20, 24, generator=g)
    start = (torch.rand(2, 1, 20, 24, generator=g) > 0.5).float()
    plain = IterativeRefinementInferer(num_passes=4, start_mask=lambda x: start, return_all_passes=True)
    windowed = IterativeRefinementInferer(
        num_passes=4,
        start_mask=lambda x: start,
        return_all_passes=True,
        inner=SlidingWindowInferer(roi_size=(8, 8), sw_batch_size=3, overlap=0.0),
    )
    expected = plain(images, XorStub())
    assert torch.equal(windowed(images, XorStub()), expected)
    # closed form: mask_k = (image > 0) XOR mask_{k-1}
    mask = start.bool()
    for k in range(4):
        mask = (images[:, :1] > 0) ^ mask
        assert torch.equal(expected[k] > 0, mask)


def test_inner_with_early_stop():
    images, start = _bounded_batch()
    inner = SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=1)  # one window: identical to the plain call
    inferer = IterativeRefinementInferer(num_passes=10, start_mask=lambda x: start, early_stop=True, inner=inner)
    stub = DilationStub(bounded=True)
    refinement = inferer.refine(images, stub)
    result = refinement.logits
    assert refinement.num_passes.tolist() == [3, 6]
    full = IterativeRefinementInferer(num_passes=10, start_mask=lambda x: start)(images, DilationStub(bounded=True))
    assert torch.equal(result, full)


def test_network_args_are_forwarded():
    def net(x: torch.Tensor, scale: float, *, shift: float = 0.0) -> torch.Tensor:
        return scale * x[:, -1:] + shift

    inferer = IterativeRefinementInferer(num_passes=1, start_mask="full")
    assert torch.equal(inferer(torch.zeros(1, 1, 3, 3), net, 2.0, shift=1.0), torch.full((1, 1, 3, 3), 3.0))


@pytest.mark.parametrize("name, value", [("empty", -10.0), ("full", 10.0)])
def test_constant_start_masks(name, value):
    inferer = IterativeRefinementInferer(num_passes=2, start_mask=name)
    out = inferer(torch.rand(2, 3, 6, 6), DilationStub())
    assert torch.equal(out, torch.full((2, 1, 6, 6), value))


def test_integer_images_are_accepted():
    images = torch.ones(1, 1, 4, 4, dtype=torch.uint8)
    out = IterativeRefinementInferer(num_passes=1, start_mask="full")(images, DilationStub())
    assert out.dtype == torch.float32


def test_metatensor_in_metatensor_out():
    images = MetaTensor(torch.zeros(1, 1, 6, 6), meta={"filename_or_obj": "a.png"})
    out = IterativeRefinementInferer(num_passes=2, start_mask="full")(images, DilationStub())
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.png"
    assert torch.equal(out.as_tensor(), torch.full((1, 1, 6, 6), 10.0))


def test_inference_mode_early_stop():
    images, start = _bounded_batch()
    with torch.inference_mode():
        inferer = IterativeRefinementInferer(num_passes=10, start_mask=lambda x: start.clone(), early_stop=True)
        refinement = inferer.refine(images.clone(), DilationStub(bounded=True))
    out = refinement.logits
    assert refinement.num_passes.tolist() == [3, 6]
    full = IterativeRefinementInferer(num_passes=10, start_mask=lambda x: start)(images, DilationStub(bounded=True))
    assert torch.equal(out, full)


def _small_fanet() -> FANet:
    torch.manual_seed(0)
    return FANet(in_channels=3, channels=SMALL).eval()


def test_fanet_inference_mode_and_torchscript_match_eager():
    net = _small_fanet()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 32, 32, generator=g)
    start = (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()
    inferer = IterativeRefinementInferer(num_passes=3, start_mask=lambda x: start, return_all_passes=True)
    with torch.no_grad():
        eager = inferer(images, net)
    with torch.inference_mode():
        in_mode = inferer(images, net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
    with torch.inference_mode():
        script_out = inferer(images, scripted)
    assert eager.shape == (3, 2, 1, 32, 32)
    assert torch.allclose(in_mode, eager, atol=1e-5)
    assert torch.allclose(script_out, eager, atol=1e-5)


def test_amp_outputs_float32():
    net = _small_fanet()
    inferer = IterativeRefinementInferer(num_passes=2, start_mask="full", amp=True)
    with torch.inference_mode():
        out = inferer(torch.rand(1, 3, 32, 32), net)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 32, 32)
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stays_on_device():
    net = _small_fanet().cuda()
    inferer = IterativeRefinementInferer(num_passes=3, start_mask="empty", early_stop=True, amp=True)
    with torch.inference_mode():
        refinement = inferer.refine(torch.rand(2, 3, 32, 32, device="cuda"), net)
    out = refinement.logits
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert refinement.num_passes.device.type == "cuda"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_passes": 0}, "num_passes"),
        ({"num_passes": 2.5}, "num_passes"),
        ({"start_mask": "otsu2"}, "start_mask"),
        ({"start_mask": 3}, "start_mask"),
        ({"feedback": "soft"}, "feedback"),
        ({"threshold": 1.0}, "threshold"),
        ({"tolerance": -0.1}, "tolerance"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IterativeRefinementInferer(**kwargs)


def test_bad_start_mask_shape_and_bad_network_output():
    with pytest.raises(ValueError, match="start_mask callable"):
        inferer = IterativeRefinementInferer(start_mask=lambda x: torch.zeros(1, 2, 4, 4))
        inferer(torch.zeros(1, 1, 4, 4), DilationStub())
    with pytest.raises(ValueError, match="one output channel"):
        IterativeRefinementInferer(start_mask="empty")(torch.zeros(1, 1, 4, 4), lambda x: x)
    with pytest.raises(ValueError, match="B, C"):
        IterativeRefinementInferer(start_mask="empty")(torch.zeros(4, 4), DilationStub())


@pytest.mark.parametrize("name, invert", [("otsu", False), ("otsu_inverted", True)])
def test_otsu_start_mask(name, invert):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    images[:, :, 4:12, 4:12] += 1.0
    seen: List[torch.Tensor] = []

    def net(x: torch.Tensor) -> torch.Tensor:
        seen.append(x[:, -1:].clone())
        return 10.0 * (2.0 * x[:, -1:] - 1.0)

    inferer = IterativeRefinementInferer(num_passes=1, start_mask=name)
    inferer(images, net)
    assert torch.equal(seen[0], otsu_mask_torch(images, invert=invert).float())
