"""Multi-class labels (issue 19 item 5): K + 1 softmax outputs, one feedback-mask channel (the foreground of any
class), label-map early stop, pass-major stacking, the cache, class-code labels, per-class Dice; binary unchanged.

The binary regression check compares today's code with ``tests/fixtures/binary_reference.pt``, written by
:func:`binary_reference.binary_reference` with the code before multi-class support (see that module).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from binary_reference import binary_reference
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandFlipd

from fanet_monai import FANet
from fanet_monai.data.transforms import BinarizeLabeld
from fanet_monai.evaluation import PassWiseEvaluationHandler, PassWiseInferer
from fanet_monai.feedback import FeedbackMaskCache
from fanet_monai.feedback.handler import FeedbackMaskHandler
from fanet_monai.feedback.inversion import CacheFrameInverse
from fanet_monai.feedback.masks import (
    check_out_channels,
    discrete_prediction,
    feedback_mask,
    foreground_mask,
    foreground_probability,
)
from fanet_monai.feedback.transforms import FeedbackMaskd
from fanet_monai.inferers import IterativeRefinementInferer, UnrolledFeedbackInferer, early_stop_passes
from fanet_monai.losses import PassAveragedLoss
from fanet_monai.metrics import PassWiseMetrics, class_dice_names, per_class_dice

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "binary_reference.pt"
NARROW = (4, 8, 8, 8)


def logits_of(probabilities: list[list[float]]) -> torch.Tensor:
    """Logits ``(1, C, N)`` whose softmax over C is the given per-pixel probabilities ``N x C``."""
    return torch.tensor(probabilities).log().T[None]


class ClassSwitch(torch.nn.Module):
    """Pointwise 3-class network on ``cat(image, mask)``: inside the region (image channel 0 > 0.5) class 1 where
    the fed mask is 0, class 2 where it is 1; background elsewhere. From an empty start mask: pass 1 predicts class
    1 on the region, pass 2 class 2 (the same foreground, another label map), pass 3 class 2 again."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        region, mask = (x[:, :1] > 0.5).float(), (x[:, -1:] > 0.5).float()
        return torch.cat([torch.zeros_like(region), 10 * region * (1 - mask) - 5, 10 * region * mask - 5], dim=1)


def region_images(size: int = 12) -> torch.Tensor:
    """Two 1-channel images ``(2, 1, size, size)``: the first with a square region, the second empty."""
    images = torch.zeros(2, 1, size, size)
    images[0, 0, 3:9, 2:7] = 1.0
    return images


# -- the foreground rule ----------------------------------------------------------------------------------------------
def test_foreground_rule_on_hand_made_logits():
    # pixels: background sure; class 2 sure; background most likely but under 0.5 (any-class probability 0.6)
    logits = logits_of([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.4, 0.3, 0.3]])
    torch.testing.assert_close(foreground_probability(logits), torch.tensor([[[0.2, 0.9, 0.6]]]))
    assert discrete_prediction(logits).tolist() == [[[0.0, 2.0, 0.0]]]
    assert foreground_mask(logits).tolist() == [[[False, True, False]]]  # argmax != 0, not 1 - p_bg > 0.5
    binary, probability = feedback_mask(logits, "binary"), feedback_mask(logits, "probability")
    assert binary.shape == probability.shape == (1, 1, 3)  # one mask channel for three classes
    assert binary.tolist() == [[[0.0, 1.0, 0.0]]]
    torch.testing.assert_close(probability, torch.tensor([[[0.2, 0.9, 0.6]]]))
    # one channel: the sigmoid, as before
    single = torch.tensor([[[-1.0, 0.5, 3.0]]])
    assert feedback_mask(single, "binary", 0.6).tolist() == [[[0.0, 1.0, 1.0]]]
    assert discrete_prediction(single, 0.7).tolist() == [[[0.0, 0.0, 1.0]]]
    torch.testing.assert_close(foreground_probability(single), torch.sigmoid(single))
    # two channels is neither the binary nor the multi-class layout
    for bad in (0, 2):
        with pytest.raises(ValueError, match="one output channel"):
            check_out_channels(bad)
    with pytest.raises(ValueError, match="one output channel"):
        feedback_mask(torch.zeros(1, 2, 3))


# -- inferers ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, 16)])
def test_refinement_with_three_outputs_feeds_one_mask_channel(spatial_dims, size):
    torch.manual_seed(0)
    net = FANet(spatial_dims=spatial_dims, in_channels=1, out_channels=3, channels=NARROW).eval()
    images = torch.rand(2, 1, *([size] * spatial_dims))
    seen: list[torch.Tensor] = []

    def recording(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return net(x)

    with torch.no_grad():
        refinement = IterativeRefinementInferer(num_passes=3, start_mask="empty").refine(images, recording)
    assert len(refinement.passes) == 3 and refinement.logits.shape == (2, 3, *images.shape[2:])
    assert all(x.shape == (2, 2, *images.shape[2:]) for x in seen)  # image channel + ONE mask channel
    for k in (1, 2):  # pass k + 1 is fed the foreground of any class of pass k
        assert torch.equal(seen[k][:, -1:], (refinement.passes[k - 1].argmax(1, keepdim=True) != 0).float())


def test_early_stop_compares_label_maps_not_only_the_foreground():
    images, net = region_images(), ClassSwitch()
    every = IterativeRefinementInferer(num_passes=5, start_mask="empty", return_all_passes=True)(images, net)
    assert every.shape == (5, 2, 3, 12, 12)
    labels = torch.stack([discrete_prediction(p) for p in every])  # (P, B, 1, H, W) label maps
    assert labels[0, 0].max() == 1 and labels[1, 0].max() == 2  # pass 2: same foreground, other class
    assert torch.equal(labels[0] > 0, labels[1] > 0)
    net.calls = 0
    refinement = IterativeRefinementInferer(num_passes=5, start_mask="empty", early_stop=True).refine(images, net)
    assert refinement.num_passes.tolist() == [3, 2]  # a foreground-only rule would stop image 0 at pass 2
    assert net.calls == 3  # pass 3 ran on image 0 alone, then nothing was left
    assert torch.equal(early_stop_passes(labels, 0.0), refinement.num_passes)
    torch.testing.assert_close(refinement.logits, every[2])


def test_passwise_inferer_stacks_passes_pass_major():
    images, net = region_images(), ClassSwitch()
    every = IterativeRefinementInferer(num_passes=3, start_mask="empty", return_all_passes=True)(images, net)
    stacked = PassWiseInferer(num_passes=3, start_mask="empty")(images, net)
    assert stacked.shape == (2, 9, 12, 12)
    for k in range(3):
        assert torch.equal(stacked[:, 3 * k : 3 * k + 3], every[k])


def test_unrolled_stacks_passes_pass_major_and_the_loss_splits_them():
    images, net = region_images(), ClassSwitch()
    out = UnrolledFeedbackInferer(num_passes=3, loss_on_every_pass=True, start_mask="empty")(images, net)
    assert out.shape == (2, 9, 12, 12)
    pass1 = net(torch.cat([images, torch.zeros_like(images)], 1))
    pass2 = net(torch.cat([images, feedback_mask(pass1)], 1))
    assert torch.equal(out[:, :3], pass1) and torch.equal(out[:, 3:6], pass2)
    label = torch.zeros(2, 1, 12, 12)
    label[0, 0, 3:9, 2:7] = 2.0  # integer-valued float class codes
    dice_ce = DiceCELoss(softmax=True, to_onehot_y=True)
    loss = PassAveragedLoss(dice_ce, out_channels=3)(out, label)
    by_hand = torch.stack([dice_ce(out[:, 3 * k : 3 * k + 3], label) for k in range(3)]).mean()
    torch.testing.assert_close(loss, by_hand)
    assert dice_ce(out[:, 3:6], label) < dice_ce(out[:, :3], label)  # pass 2 is right, pass 1 is not
    with pytest.raises(ValueError, match="multiple of out_channels=3"):
        PassAveragedLoss(dice_ce, out_channels=3)(out[:, :8], label)
    with pytest.raises(ValueError, match="out_channels"):
        PassAveragedLoss(dice_ce, out_channels=0)


def test_unrolled_fanet_with_three_outputs_trains():
    torch.manual_seed(0)
    net = FANet(in_channels=1, out_channels=3, channels=NARROW)
    images = torch.rand(2, 1, 32, 32)
    label = torch.randint(0, 3, (2, 1, 32, 32)).float()
    out = UnrolledFeedbackInferer(num_passes=2, loss_on_every_pass=True, start_mask="empty")(images, net)
    assert out.shape == (2, 6, 32, 32)
    PassAveragedLoss(DiceCELoss(softmax=True, to_onehot_y=True), out_channels=3)(out, label).backward()
    assert net.head.conv.weight.grad is not None and net.head.conv.weight.grad.abs().sum() > 0


# -- the feedback cache ------------------------------------------------------------------------------------------------
def flipped_sample(transform: Compose, label: torch.Tensor) -> dict:
    meta = {"filename_or_obj": "/data/case.nii.gz"}
    image = MetaTensor(torch.rand(1, *label.shape[1:]), meta=dict(meta))
    return transform({"image": image, "label": MetaTensor(label, meta=dict(meta))})


def test_cache_stores_the_foreground_of_any_class_through_a_flip():
    cache = FeedbackMaskCache()
    transform = Compose([FeedbackMaskd("image", cache, initial="empty"),
                         RandFlipd(["image", "label", "mask"], prob=1.0, spatial_axis=0)])
    label = torch.zeros(1, 10, 8)
    label[0, 1:4, 1:6] = 1.0
    label[0, 5:9, 2:5] = 2.0
    item = flipped_sample(transform, label)
    assert torch.equal(item["label"], label.flip(1))  # the network sees the flipped view
    seen = item["label"].as_tensor().long()[0]
    wrong = torch.zeros(3, 10, 8)
    wrong[0] = 5.0  # pass 1: background everywhere
    right = 10.0 * torch.nn.functional.one_hot(seen, 3).movedim(-1, 0).float()  # pass 2: the label
    ambiguous = torch.tensor([0.4, 0.3, 0.3]).log()  # 1 - p_bg = 0.6, but background is the argmax
    right[:, 0, 0] = ambiguous
    pred = torch.cat([wrong, right])  # (2 passes * 3, H, W), pass-major
    inverse = CacheFrameInverse(transform, cache, out_channels=3)
    key, stored = inverse.to_cache_frame(item["mask"], pred)
    assert key == "case.nii.gz" and stored.shape == (1, 10, 8) and stored.dtype == np.uint8
    expected = (label > 0).numpy().astype(np.uint8)
    assert np.array_equal(stored, expected)  # the last pass, unflipped, any class, argmax rule
    assert expected[0, -1, 0] == 0  # the ambiguous pixel, back in the cache frame
    with pytest.raises(ValueError, match="out_channels=3"):
        inverse.to_cache_frame(item["mask"], pred[:4])
    # the handler: the same mask in its cache, and its Dice against the (any-class) label is 1
    handler = FeedbackMaskHandler(cache, transform, out_channels=3)
    cache.put(key, np.zeros_like(stored))
    handler.store(SimpleNamespace(state=SimpleNamespace(batch=[item], output=[{"pred": pred}])))
    assert np.array_equal(cache.get(key), expected)
    assert handler._stored_sum == pytest.approx(1.0) and handler._stored_count == 1


def test_degraded_source_reads_any_class_of_an_integer_label():
    label = torch.zeros(1, 24, 24)
    label[0, 4:20, 4:12] = 1.0
    label[0, 4:20, 12:20] = 2.0  # one component, two classes
    transform = FeedbackMaskd("image", FeedbackMaskCache(), source="mixed", mix={"degraded": 1.0})
    image = MetaTensor(torch.rand(1, 24, 24), meta={"filename_or_obj": "a.png"})
    for seed in range(5):
        transform.set_random_state(seed)
        mask = transform({"image": image, "label": label})["mask"]
        assert mask.shape == (1, 24, 24) and mask[0, 8:16, 14:18].sum() > 0  # class 2 is foreground too


# -- labels ------------------------------------------------------------------------------------------------------------
def test_binarize_label_keeps_class_codes_and_refuses_others_naming_the_file():
    codes = torch.tensor([[[0, 1, 2, 3], [3, 3, 0, 1]]], dtype=torch.uint8)
    label = MetaTensor(codes, meta={"filename_or_obj": "/data/labels/case7.nii.gz"})
    out = BinarizeLabeld("label", num_classes=3)({"label": label})["label"]
    assert out.dtype == torch.float32 and out.shape == (1, 2, 4)
    assert out.tolist() == codes.float().tolist()  # kept, not binarized
    # binary (as before): four levels of an 8-bit mask read as JPEG noise around 0 (> 127): the classes would be lost
    assert BinarizeLabeld("label")({"label": label})["label"].unique().tolist() == [0.0]
    bad = MetaTensor(torch.tensor([[[0, 5, 2]]], dtype=torch.uint8), meta={"filename_or_obj": "/data/case9.png"})
    with pytest.raises(ValueError, match=r"/data/case9\.png: .*0\.\.3.*found \[0, 2, 5\]"):
        BinarizeLabeld("label", num_classes=3)({"label": bad})
    half = MetaTensor(torch.tensor([[[0.0, 1.5]]]), meta={"filename_or_obj": "x.nii"})
    with pytest.raises(ValueError, match=r"x\.nii: .*found \[0, 1\.5\]"):
        BinarizeLabeld("label", num_classes=3)({"label": half})
    rgb = MetaTensor(torch.zeros(3, 2, 2), meta={"filename_or_obj": "rgb.png"})
    with pytest.raises(ValueError, match=r"rgb\.png: .*one channel, got 3 channels"):
        BinarizeLabeld("label", num_classes=3)({"label": rgb})
    with pytest.raises(ValueError, match="num_classes"):
        BinarizeLabeld("label", num_classes=0)
    with pytest.raises(ValueError, match="threshold"):
        BinarizeLabeld("label", threshold=0.5, num_classes=3)


# -- metrics -----------------------------------------------------------------------------------------------------------
def test_per_class_dice_by_hand():
    pred = torch.tensor([[[[1, 1, 2, 0], [0, 2, 2, 0]]], [[[0, 0, 0, 0], [0, 0, 3, 0]]]]).float()
    target = torch.tensor([[[[1, 0, 2, 2], [0, 2, 0, 0]]], [[[0, 0, 0, 0], [0, 0, 0, 0]]]]).float()
    dice = per_class_dice(pred, target, num_classes=3)
    # image 0: class 1: pred 2 px, target 1, overlap 1 -> 2/3; class 2: pred 3, target 3, overlap 2 -> 4/6;
    # class 3 absent from both -> 1.0. Image 1: classes 1, 2 absent from both -> 1.0; class 3 predicted only -> 0.0
    torch.testing.assert_close(dice, torch.tensor([[2 / 3, 2 / 3, 1.0], [1.0, 1.0, 0.0]]))
    ignored = per_class_dice(pred, target, num_classes=3, ignore_empty=True)
    assert torch.isnan(ignored[1]).all() and torch.isnan(ignored[0, 2])
    torch.testing.assert_close(ignored[0, :2], dice[0, :2])
    with pytest.raises(ValueError, match="class codes 0..2"):
        per_class_dice(pred, target, num_classes=2)
    assert class_dice_names(2) == ("dice_class_1", "dice_class_2", "dice_class_mean")
    metric = PassWiseMetrics(("f1",), num_classes=3)
    values = metric.update(0, pred, target)
    assert metric.columns == ("f1", "dice_class_1", "dice_class_2", "dice_class_3", "dice_class_mean")
    torch.testing.assert_close(values["dice_class_mean"], dice.mean(1))
    # f1 on the foreground of any class: image 0 pred 5 px, target 4 px, overlap 3 -> 6/9; image 1: 1 FP -> 0.0
    torch.testing.assert_close(values["f1"], torch.tensor([6 / 9, 0.0]))
    row = metric.aggregate()[0]
    assert row["dice_class_1"] == pytest.approx((2 / 3 + 1.0) / 2) and row["n_images"] == 2


def test_passwise_evaluation_reports_per_class_dice_per_pass(tmp_path):
    images = region_images()
    labels = torch.zeros(2, 1, 12, 12)
    labels[0, 0, 3:9, 2:7] = 2.0
    handler = PassWiseEvaluationHandler(output_dir=tmp_path, plots=False, metrics=("f1", "jaccard"))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader([{"image": images[b], "label": labels[b]} for b in range(2)], batch_size=2),
        network=ClassSwitch(),
        inferer=PassWiseInferer(num_passes=4, start_mask="empty"),
        val_handlers=[handler],
    )
    evaluator.run()
    rows = handler.rows
    assert [r["pass"] for r in rows] == [1, 2, 3, 4, "early_stop"]
    # pass 1: class 1 where class 2 is -> image 0 scores 0 for both classes; image 1 (all background) scores 1
    assert rows[0]["dice_class_1"] == pytest.approx(0.5) and rows[0]["dice_class_2"] == pytest.approx(0.5)
    assert rows[0]["f1"] == pytest.approx(1.0)  # the foreground of any class is right from pass 1
    for row in rows[1:]:
        assert row["dice_class_1"] == row["dice_class_2"] == row["dice_class_mean"] == pytest.approx(1.0)
    assert rows[-1]["mean_passes"] == pytest.approx(2.5)  # image 0 stops at pass 3, image 1 at pass 2
    assert evaluator.state.metrics["early_stop_dice_class_2"] == pytest.approx(1.0)
    with open(tmp_path / "metrics_per_pass.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:6] == ["pass", "f1", "jaccard", "dice_class_1", "dice_class_2", "dice_class_mean"]
    wrong = PassWiseEvaluationHandler(output_dir=None, num_classes=4)
    with pytest.raises(ValueError, match="num_classes=4"):
        SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader([{"image": images[0],
                            "label": labels[0]}]), network=ClassSwitch(),
                            inferer=PassWiseInferer(num_passes=2, start_mask="empty"), val_handlers=[wrong]).run()


# -- binary: unchanged -------------------------------------------------------------------------------------------------
def test_binary_results_are_those_of_the_code_before_multiclass_support():
    expected = torch.load(FIXTURE, weights_only=True)
    actual = binary_reference(expected)
    assert actual.keys() == expected.keys()
    for name in ("refine_binary", "refine_probability", "unrolled", "loss", "passwise"):
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-5, msg=name)
    for name in ("refine_binary_used", "refine_probability_used", "passwise_used", "cache"):
        assert torch.equal(actual[name], expected[name]), name
    assert sorted(set(expected["refine_binary_used"].tolist())) == [2, 4]  # early stop took effect
    assert 0 < float(expected["cache"].float().mean()) < 1
    assert float(actual["stored_dice_sum"]) == pytest.approx(float(expected["stored_dice_sum"]), abs=1e-6)
    assert len(actual["rows"]) == len(expected["rows"]) == 4
    for got, want in zip(actual["rows"], expected["rows"]):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == (value if isinstance(value, str) else pytest.approx(value, abs=1e-6)), key
    assert not any(math.isnan(v) for row in expected["rows"] for v in row.values() if isinstance(v, float))


@pytest.mark.slow
def test_multiclass_volumes_through_the_bundle_with_one_setting(tmp_path):
    """``num_classes: 2`` with ``volume.json``: 3 output channels, label codes kept, per-class Dice per pass,
    masks written with the codes 0..2 on the input's grid."""
    import nibabel as nib

    from fanet_monai.bundle import bundle_configs, run_workflow
    from fanet_monai.data import make_volume_dataset
    from fanet_monai.run import release_claims

    data = make_volume_dataset(tmp_path / "data", num_volumes=5, shape=(20, 20, 24), kind="blobs", num_classes=2,
                               seed=1)
    tiny = {"bundle_root": str(tmp_path / "run"), "num_workers": 0, "num_passes": 2, "patch_size": [16, 16, 16],
            "network_def#channels": [4, 8, 8, 8], "num_classes": 2}
    workflow = run_workflow(bundle_configs("train", "volume"), "training", dataset_dir=str(data), max_epochs=1,
                            batch_size=2, show_progress=False, **tiny)
    release_claims()
    assert workflow.parser.get_parsed_content("out_channels") == 3
    cache = workflow.parser.get_parsed_content("feedback_cache")
    assert {cache.get(k).shape for k in cache.keys()} == {(1, 20, 20, 24)}  # one mask channel
    run_workflow(bundle_configs("train", "evaluate", "volume"), "evaluating", dataset_dir=str(data),
                 num_qualitative=1, **tiny)
    with open(tmp_path / "run" / "eval" / "metrics_per_pass.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["pass"] for r in rows] == ["1", "2", "early_stop"]
    assert {"dice_class_1", "dice_class_2", "dice_class_mean", "hd95_class_1", "hd95_class_2",
            "surface_dice_class_mean", "cldice", "betti0_error"} <= set(rows[0])
    assert all(float(r["hd95_class_mean"]) >= 0 and 0 <= float(r["surface_dice_class_mean"]) <= 1 for r in rows)
    assert (tmp_path / "run" / "eval" / "qualitative.png").stat().st_size > 1000  # three orthogonal slices
    out = tmp_path / "masks"
    run_workflow(bundle_configs("inference", "volume"), "run", dataset_dir=str(data / "images"),
                 output_dir=str(out), **tiny)
    written = sorted(out.rglob("*.nii.gz"))
    assert len(written) == 5
    for path in written:
        mask = nib.load(path)
        assert mask.shape == (20, 20, 24) and set(np.unique(mask.get_fdata())) <= {0.0, 1.0, 2.0}


def test_the_data_check_takes_class_codes_and_refuses_undeclared_ones(tmp_path):
    from PIL import Image

    from fanet_monai.data.checks import check_items
    from fanet_monai.data.files import DataCheckError

    items = []
    for i, codes in enumerate(([0, 1, 2], [0, 2], [0, 3])):
        image, label = tmp_path / f"i{i}.png", tmp_path / f"m{i}.png"
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(image)
        Image.fromarray(np.resize(np.array(codes, np.uint8), (8, 8))).save(label)
        items.append({"image": str(image), "label": str(label)})
    report = check_items({"training": items[:2]}, num_classes=2)
    assert not report.problems and report.splits["training"][0].levels == 3
    with pytest.raises(DataCheckError, match=r"m2.png: label values \[0, 3\] .* not the declared classes 0..2"):
        check_items({"training": items}, num_classes=2)
