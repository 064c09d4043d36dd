"""Training mask sources (previous / initial / mixed with perturbations), unrolled training, pass-averaged loss,
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.losses import DiceCELoss
from scipy import ndimage

from fanet_monai.data import make_synthetic_dataset
from fanet_monai.feedback import FeedbackMaskCache, otsu_mask_torch
from fanet_monai.feedback.sources import (
    DEFAULT_MIX,
    box_per_component,
    degrade_label,
    drop_components,
    normalize_mix,
    paste_label_boxes,
    perturb_mask,
    polygon_per_component,
)
from fanet_monai.feedback.masks import start_mask
from fanet_monai.inferers import UnrolledFeedbackInferer
from fanet_monai.losses import PassAveragedLoss
from fanet_monai.feedback.transforms import FeedbackMaskd


def sample(name="a.png", size=(24, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": MetaTensor(torch.rand(3, *size, generator=g), meta={"filename_or_obj": f"/x/{name}"})}


def blob_mask(size=(24, 32)):
    mask = np.zeros((1, *size), np.uint8)
    mask[0, 4:12, 4:12] = 1
    mask[0, 15:21, 20:30] = 1
    return mask


def test_previous_and_initial_sources():
    cache = FeedbackMaskCache()
    data = sample()
    otsu = otsu_mask_torch(data["image"][None].as_tensor())[0]
    previous = FeedbackMaskd("image", cache, source="previous")
    assert torch.equal(previous(data)["mask"].as_tensor(), otsu)  # nothing cached yet: the start mask
    cache.put("a.png", blob_mask())
    assert torch.equal(previous(data)["mask"].as_tensor(), torch.as_tensor(blob_mask(), dtype=torch.float32))
    initial = FeedbackMaskd("image", cache, source="initial")
    assert torch.equal(initial(data)["mask"].as_tensor(), otsu)  # ignores the cache
    for kind in ("otsu_inverted", "empty", "full"):
        out = FeedbackMaskd("image", cache, source="initial", initial=kind)(data)["mask"].as_tensor()
        assert torch.equal(out, start_mask(data["image"][None].as_tensor(), kind)[0])


def test_mixed_source_draws_each_kind_with_its_probability():
    cache = FeedbackMaskCache()
    cache.put("a.png", blob_mask())
    transform = FeedbackMaskd("image", cache, source="mixed", mix={"previous": 1, "empty": 1, "full": 2})
    transform.set_random_state(0)
    data = sample()
    previous = torch.as_tensor(blob_mask(), dtype=torch.float32)
    kinds = Counter()
    for _ in range(400):
        mask = transform(data)["mask"].as_tensor()
        kinds["empty" if mask.sum() == 0 else "full" if mask.all() else "previous"] += 1
        if 0 < mask.sum() < mask.numel():
            assert torch.equal(mask, previous)
    assert abs(kinds["full"] / 400 - 0.5) < 0.08 and abs(kinds["empty"] / 400 - 0.25) < 0.08


def test_perturbed_previous_is_a_plausible_wrong_mask():
    rng = np.random.RandomState(0)
    mask = blob_mask()
    dilated3 = ndimage.binary_dilation(mask[0], iterations=3)
    changed = 0
    for _ in range(50):
        out = perturb_mask(mask, rng, max_radius=3, drop_probability=0.3)
        assert out.shape == mask.shape and out.dtype == np.uint8
        assert (out[0] <= dilated3).all()  # never beyond a 3-pixel dilation, never new blobs
        changed += int(not np.array_equal(out, mask))
    assert changed == 50
    # some draws drop a blob entirely
    counts = {ndimage.label(perturb_mask(mask, np.random.RandomState(s))[0])[1] for s in range(40)}
    assert min(counts) < 2


def test_mix_validation():
    assert sum(normalize_mix(None).values()) == pytest.approx(1.0) and set(normalize_mix(None)) == set(DEFAULT_MIX)
    with pytest.raises(ValueError, match="unknown mask sources"):
        normalize_mix({"oracle": 1.0})
    with pytest.raises(ValueError, match="not all 0"):
        normalize_mix({"empty": 0.0})
    with pytest.raises(ValueError, match="source must be one of"):
        FeedbackMaskd("image", FeedbackMaskCache(), source="oracle")


def test_degrade_label_makes_each_kind_of_rough_annotation():
    label = blob_mask()  # two blobs: 8x8 and 6x10
    rng = np.random.RandomState(0)
    true = label[0] > 0
    eroded = degrade_label(label, rng, kind="eroded")
    dilated = degrade_label(label, rng, kind="dilated")
    assert eroded.shape == dilated.shape == label.shape and eroded.dtype == np.uint8
    assert eroded.sum() < true.sum() and not (eroded[0] & ~true).any()  # a subset
    assert dilated.sum() > true.sum() and not (true & ~dilated[0].astype(bool)).any()  # a superset
    boxes = degrade_label(label, rng, kind="box")[0].astype(bool)
    assert np.array_equal(boxes, true)  # the blobs are rectangles: their boxes are themselves
    dropped = [ndimage.label(degrade_label(label, np.random.RandomState(s), kind="components_dropped")[0])[1]
               for s in range(10)]
    assert set(dropped) == {1}  # round(0.3 * 2) = 1 of the 2 blobs goes, a different one across seeds
    polygon = degrade_label(label, rng, kind="polygon")[0].astype(bool)
    assert (polygon & true).sum() / true.sum() > 0.7 and ndimage.label(polygon)[1] == 2
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade_label(label, rng, kind="scribble")
    kinds = {tuple(degrade_label(label, np.random.RandomState(s)).ravel()) for s in range(30)}
    assert len(kinds) >= 4  # random kinds and radii


def test_component_helpers():
    mask = np.zeros((20, 20), bool)
    mask[2:5, 2:12] = True
    mask[10, 3:15] = True  # a diagonal-free thin line
    mask[14:18, 14:18] = True
    assert ndimage.label(drop_components(mask, 2 / 3, np.random.RandomState(0)))[1] == 1
    assert box_per_component(mask).sum() == 30 + 12 + 16
    circle = np.hypot(*np.mgrid[-10:11, -10:11]) <= 8
    coarse = polygon_per_component(circle, tolerance=3.0)
    assert 0.6 < coarse.sum() / circle.sum() < 1.0 and not (coarse & ~circle).any()  # inscribed, coarser
    with pytest.raises(ValueError, match="2D mask"):
        polygon_per_component(np.zeros((2, 4, 4), bool))
    cube = np.zeros((6, 6, 6), bool)
    cube[1:3, 1:4, 2:5] = True
    assert np.array_equal(degrade_label(cube[None], np.random.RandomState(0), kind="polygon")[0], cube)  # 3D: box


def test_degraded_source_degrades_the_label_and_names_missing_labels():
    cache = FeedbackMaskCache()
    data = dict(sample(), label=MetaTensor(torch.as_tensor(blob_mask(), dtype=torch.float32)))
    transform = FeedbackMaskd("image", cache, source="mixed", mix={"degraded": 1.0})
    transform.set_random_state(0)
    label = torch.as_tensor(blob_mask(), dtype=torch.float32)
    masks = [transform(data)["mask"].as_tensor() for _ in range(20)]
    assert all(m.shape == (1, 24, 32) and set(m.unique().tolist()) <= {0.0, 1.0} for m in masks)
    assert any(not torch.equal(m, label) for m in masks)  # degraded, not the label itself
    dices = [float(2 * (m * label).sum() / (m.sum() + label.sum())) for m in masks]
    assert min(dices) > 0 and np.mean(dices) > 0.5  # still a rough version of the label
    with pytest.raises(KeyError, match="a.png: the 'degraded' feedback mask source needs the label"):
        transform(sample())
    small = dict(sample(), label=MetaTensor(torch.zeros(1, 12, 16)))
    with pytest.raises(ValueError, match="a.png: label spatial shape"):
        transform(small)


def test_paste_label_boxes_is_the_label_inside_boxes_and_the_mask_elsewhere():
    rng = np.random.RandomState(0)
    label = np.zeros((1, 40, 60), bool)
    label[0, 8:30, 5:50] = True
    mask = np.zeros((1, 40, 60), np.uint8)
    mask[0, 0:10, 40:60] = 1  # a false positive partly inside the label's rows
    changed_any = False
    for _ in range(50):
        out = paste_label_boxes(mask, label, rng)
        assert out.shape == mask.shape and out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
        changed = out != mask
        assert np.array_equal(out[changed], label[changed].astype(np.uint8))  # every change is the label's value
        changed_any |= bool(changed.any())
        agrees_with_label = (out == label) | (out == mask)
        assert agrees_with_label.all()
    assert changed_any
    # a box as large as the image pastes the whole label; 3-D masks work the same
    assert np.array_equal(paste_label_boxes(mask, label, rng, max_boxes=1, side=(1.0, 1.0)), label.astype(np.uint8))
    cube = np.ones((1, 8, 8, 8), bool)
    assert paste_label_boxes(np.zeros((1, 8, 8, 8)), cube, rng).sum() > 0
    with pytest.raises(ValueError, match="differs from the label"):
        paste_label_boxes(mask, label[:, :20], rng)
    with pytest.raises(ValueError, match="max_boxes >= 1"):
        paste_label_boxes(mask, label, rng, side=(0.5, 0.2))


def test_paste_label_boxes_at_errors_corrects_an_error_with_every_box():
    rng = np.random.RandomState(1)
    label = np.zeros((1, 64, 64), bool)
    label[0, 44:52, 10:18] = True  # a small missed blob: 1.6 % of the image
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[0, 2:6, 50:60] = 1  # and a small false positive far from it
    errors = int((mask[0] != label[0]).sum())
    random_hits = 0
    for _ in range(100):
        small = dict(max_boxes=1, side=(0.0625, 0.0625))
        out = paste_label_boxes(mask, label, rng, at_errors=True, **small)
        changed = out != mask
        assert np.array_equal(out[changed], label[changed].astype(np.uint8))  # every change is the label's value
        assert 0 < int(changed.sum()) <= errors  # the one 4-pixel box always lands on an error
        random_hits += bool((paste_label_boxes(mask, label, rng, **small) != mask).any())
    assert random_hits < 30  # random boxes of the same size mostly miss (that is why the errors are targeted)
    # no error left: nothing to correct, the mask comes back unchanged (also in 3-D)
    assert np.array_equal(paste_label_boxes(label, label, rng, at_errors=True), label.astype(np.uint8))
    cube = np.zeros((1, 8, 8, 8), bool)
    cube[0, 5:, 5:, 5:] = True
    out3 = paste_label_boxes(np.zeros((1, 8, 8, 8)), cube, rng, max_boxes=1, side=(0.25, 0.25), at_errors=True)
    assert 0 < out3.sum() and (out3 <= cube).all()


def test_corrected_source_pastes_the_label_into_the_previous_mask():
    cache = FeedbackMaskCache()
    previous = np.zeros((1, 24, 32), np.uint8)
    previous[0, 18:24, 20:32] = 1  # the cached prediction: a false positive away from the label's blob
    cache.put("a.png", previous)
    label = torch.as_tensor(blob_mask(), dtype=torch.float32)
    transform = FeedbackMaskd("image", cache, source="mixed", mix={"corrected": 1.0})
    transform.set_random_state(0)
    data = dict(sample(), label=MetaTensor(label))
    masks = [transform(data)["mask"].as_tensor().numpy() for _ in range(30)]
    for m in masks:
        assert m.shape == (1, 24, 32)
        assert ((m == previous) | (m == label.numpy())).all()  # each pixel: the previous mask's or the label's
    assert any((m != previous).any() for m in masks)  # some corrections land
    assert any((m == previous).sum() > m.size // 2 for m in masks)  # and most of the previous mask stays
    with pytest.raises(KeyError, match="a.png: the 'corrected' feedback mask source needs the label"):
        transform(sample())
    assert normalize_mix({"corrected": 1, "empty": 1}) == {"corrected": 0.5, "empty": 0.5}
    # corrections on the errors: every mask differs from the previous one, and only towards the label
    at_errors = FeedbackMaskd("image", cache, source="mixed", mix={"corrected_at_errors": 1.0})
    at_errors.set_random_state(0)
    for _ in range(10):
        m = at_errors(data)["mask"].as_tensor().numpy()
        assert (m != previous).any() and ((m == previous) | (m == label.numpy())).all()
    with pytest.raises(KeyError, match="a.png: the 'corrected_at_errors' feedback mask source needs the label"):
        at_errors(sample())


def test_named_mixes():
    assert normalize_mix("default") == normalize_mix(None) == DEFAULT_MIX
    annotator = normalize_mix("annotator")
    assert annotator["corrected"] == 0.4 and abs(sum(annotator.values()) - 1) < 1e-9
    errors = normalize_mix("annotator_errors")
    assert errors["corrected_at_errors"] == 0.4 and "corrected" not in errors
    assert {k: v for k, v in errors.items() if k != "corrected_at_errors"} == {
        k: v for k, v in annotator.items() if k != "corrected"}  # the same mix, only the boxes' placement differs
    with pytest.raises(ValueError, match="unknown mask mix 'annotater'; give one of"):
        normalize_mix("annotater")


class RecordingNet(torch.nn.Module):
    """logits = w * (2 * mask - 1) + shift, where shift grows the mask each pass; records each call."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(2.0))
        self.calls = []

    def forward(self, x):
        mask = x[:, -1:]
        self.calls.append((torch.is_grad_enabled(), mask.detach().clone()))
        grown = torch.nn.functional.max_pool2d(mask, 3, 1, 1)  # dilate the mask by one pixel
        return self.w * (2 * grown - 1)


@pytest.mark.parametrize("every_pass", [False, True])
def test_unrolled_inferer_runs_k_passes_and_backpropagates_through_the_last_unless_asked(every_pass):
    net = RecordingNet()
    images = torch.zeros(2, 3, 9, 9)
    mask = torch.zeros(2, 1, 9, 9)
    mask[:, 0, 4, 4] = 1  # fed mask: one pixel
    inferer = UnrolledFeedbackInferer(num_passes=3, loss_on_every_pass=every_pass)
    out = inferer(images, net, mask=mask)
    assert len(net.calls) == 3
    assert [grad for grad, _ in net.calls] == ([True] * 3 if every_pass else [False, False, True])
    # pass k is fed the binarized prediction of pass k - 1: a square growing by one pixel per pass
    for k, (_, mask) in enumerate(net.calls):
        assert mask[0, 0].sum() == (2 * k + 1) ** 2
    assert out.shape == ((2, 3, 9, 9) if every_pass else (2, 1, 9, 9))
    loss = PassAveragedLoss(torch.nn.MSELoss())(out, torch.ones(2, 1, 9, 9))
    loss.backward()
    assert net.w.grad is not None and net.w.grad != 0
    with torch.no_grad():
        assert not inferer(images, net, mask=mask).requires_grad
    assert torch.equal(mask[:, 0, 4, 4], torch.ones(2))  # the fed mask itself is not modified


def test_unrolled_inferer_starts_from_its_start_mask_without_a_mask_and_checks_shapes():
    net = RecordingNet()
    images = torch.rand(2, 3, 9, 9)
    UnrolledFeedbackInferer(num_passes=2, start_mask="full")(images, net)
    assert torch.equal(net.calls[0][1], torch.ones(2, 1, 9, 9))
    with pytest.raises(ValueError, match="mask must have shape"):
        UnrolledFeedbackInferer()(images, net, mask=torch.zeros(2, 2, 9, 9))


def test_unrolled_inferer_probability_feedback_feeds_the_sigmoid():
    net = RecordingNet()
    mask = torch.zeros(1, 1, 5, 5)
    mask[0, 0, 2, 2] = 1
    UnrolledFeedbackInferer(num_passes=2, feedback="probability")(torch.zeros(1, 3, 5, 5), net, mask=mask)
    expected = torch.sigmoid(2.0 * (2 * torch.nn.functional.max_pool2d(mask, 3, 1, 1) - 1))
    torch.testing.assert_close(net.calls[1][1], expected)


def test_pass_averaged_loss_is_the_mean_over_passes():
    base = DiceCELoss(sigmoid=True)
    pred, target = torch.randn(2, 3, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    expected = sum(base(pred[:, k : k + 1], target) for k in range(3)) / 3
    assert torch.allclose(PassAveragedLoss(base)(pred, target), expected)
    assert torch.allclose(PassAveragedLoss(base)(pred[:, :1], target), base(pred[:, :1], target))


def test_unrolled_and_mixed_training_run_in_the_bundle(tmp_path, tiny_training):
    data = make_synthetic_dataset(tmp_path / "data", num_images=6, height=32, width=32, seed=0)
    wf = tiny_training(tmp_path / "run", data, image_size=[32, 32], max_epochs=1, mask_source="mixed",
                       unroll_passes=2, loss_on_every_pass=True, start_mask="otsu_inverted")
    wf.run()
    cache = wf.parser.get_parsed_content("feedback_cache")
    assert len(cache) == 5 and all(cache.get(k).shape == (1, 32, 32) for k in cache.keys())
    assert wf.parser.get_parsed_content("train#inferer").num_passes == 2
    assert wf.parser.get_parsed_content("validate#inferer").start_mask == "otsu_inverted"


@pytest.mark.parametrize("mix", [{"degraded": 0.5, "empty": 0.5}, "annotator", "annotator_errors"])
def test_label_reading_sources_train_in_the_bundle(tmp_path, tiny_training, mix):
    data = make_synthetic_dataset(tmp_path / "data", num_images=6, height=32, width=32, seed=0)
    wf = tiny_training(tmp_path / "run", data, image_size=[32, 32], max_epochs=2, mask_source="mixed",
                       mask_mix=mix, unroll_random=True)
    wf.run()
    transform = wf.parser.get_parsed_content("train#feedback_mask")
    assert transform.mix == normalize_mix(mix) and transform.label_key == "label"
    assert len(wf.parser.get_parsed_content("feedback_cache")) == 5


def test_unrolled_inferer_random_passes_draws_every_k_and_trains_the_last():
    net = RecordingNet()
    inferer = UnrolledFeedbackInferer(num_passes=3, random_passes=True)
    images, mask = torch.zeros(1, 3, 9, 9), torch.zeros(1, 1, 9, 9)
    torch.manual_seed(0)
    counts = Counter()
    for _ in range(60):
        net.calls.clear()
        out = inferer(images, net, mask=mask)
        counts[len(net.calls)] += 1
        assert [grad for grad, _ in net.calls] == [False] * (len(net.calls) - 1) + [True]
        assert out.shape == (1, 1, 9, 9)
    assert set(counts) == {1, 2, 3} and min(counts.values()) >= 10
    with pytest.raises(ValueError, match="cannot be combined"):
        UnrolledFeedbackInferer(num_passes=3, random_passes=True, loss_on_every_pass=True)
