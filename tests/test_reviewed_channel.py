"""The reviewed channel: a network told which pixels of its fed mask an annotator corrected (``reviewed_input``).

Training writes the pasted boxes of the ``corrected`` sources (``FeedbackMaskd(reviewed_key=...)``), the trainer's
unrolled inferer and the test-time inferer put them between the image and the mask, and the bundle option
``reviewed_input`` wires network, training, inference, evaluation, the run record and the packaged metadata.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from fanet_monai import FANet
from fanet_monai.cli import run
from fanet_monai.data import make_synthetic_dataset
from fanet_monai.feedback.cache import FeedbackMaskCache
from fanet_monai.feedback.masks import start_mask
from fanet_monai.feedback.sources import paste_label_boxes
from fanet_monai.feedback.transforms import FeedbackMaskd, feedback_batch_keys
from fanet_monai.inferers import AnnotatorConstraint, IterativeRefinementInferer, UnrolledFeedbackInferer
from fanet_monai.run import release_claims


class InputRecorder(torch.nn.Module):
    """Logits = 4 * (2 * mask - 1) (the fed mask back, sharpened); records every input it is called with."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return 4.0 * (2.0 * x[:, -1:] - 1.0)


def blob_label(shape=(32, 32)) -> np.ndarray:
    label = np.zeros((1, *shape), dtype=np.uint8)
    label[(0, *[slice(s // 4, 3 * s // 4) for s in shape])] = 1
    return label


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
@pytest.mark.parametrize("at_errors", [False, True])
def test_pasted_boxes_are_returned_as_the_reviewed_pixels(shape, at_errors):
    label = blob_label(shape)
    mask = np.zeros_like(label)
    for seed in range(10):
        plain = paste_label_boxes(mask, label, np.random.RandomState(seed), at_errors=at_errors)
        pasted, reviewed = paste_label_boxes(mask, label, np.random.RandomState(seed), at_errors=at_errors,
                                             return_reviewed=True)
        assert np.array_equal(pasted, plain)  # the same draws: runs without the channel stay reproducible
        assert reviewed.shape == label.shape and reviewed.dtype == np.uint8 and reviewed.any()
        on = reviewed.astype(bool)
        assert np.array_equal(pasted[on], label[on])  # the label wherever reviewed
        assert np.array_equal(pasted[~on], mask[~on])  # the fed mask elsewhere
    # no error left: no box is pasted, nothing is reviewed
    pasted, reviewed = paste_label_boxes(label, label, np.random.RandomState(0), at_errors=True, return_reviewed=True)
    assert np.array_equal(pasted, label) and not reviewed.any()


def test_feedback_transform_writes_reviewed_pixels_only_for_corrections():
    image = MetaTensor(torch.rand(3, 32, 32), meta={"filename_or_obj": "/data/a.png"})
    label = torch.as_tensor(blob_label(), dtype=torch.float32)
    for choice in ("corrected", "corrected_at_errors", "empty", "initial", "degraded", "perturbed"):
        transform = FeedbackMaskd("image", FeedbackMaskCache(), source="mixed", mix={choice: 1.0},
                                  reviewed_key="reviewed")
        transform.set_random_state(3)
        out = transform({"image": image, "label": label})
        reviewed = out["reviewed"]
        assert isinstance(reviewed, MetaTensor) and reviewed.shape == (1, 32, 32) and reviewed.dtype == torch.float32
        assert set(reviewed.unique().tolist()) <= {0.0, 1.0}
        if choice.startswith("corrected"):
            on = reviewed > 0
            assert on.any() and torch.equal(out["mask"][on], label[on])
        else:  # a start mask, an empty or perturbed prediction, a rough label: nothing is final
            assert not reviewed.any(), choice
    plain = FeedbackMaskd("image", FeedbackMaskCache(), source="mixed", mix={"corrected": 1.0})
    assert "reviewed" not in plain({"image": image, "label": label})
    assert feedback_batch_keys(False) == {"mask": "mask"}
    assert feedback_batch_keys(True) == {"mask": "mask", "reviewed": "reviewed"}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_network_reads_the_reviewed_channel_with_the_image(spatial_dims):
    size = (16,) * spatial_dims
    torch.manual_seed(0)
    net = FANet(spatial_dims, 1, 1, variant="B1", channels=(4, 8, 8, 8), reviewed_input=True)  # batch statistics
    first_conv = next(p for n, p in net.named_parameters() if n.startswith("encoder.0") and p.ndim > 2)
    assert first_conv.shape[1] == 2 and net.guided_channels == 2  # the image and the reviewed channel
    image, mask = torch.rand(1, 1, *size), (torch.rand(1, 1, *size) > 0.5).float()
    nothing, some = torch.zeros(1, 1, *size), torch.zeros(1, 1, *size)
    some[(0, 0) + (slice(0, 8),) * spatial_dims] = 1
    with torch.no_grad():
        a, b = net(torch.cat([image, nothing, mask], 1)), net(torch.cat([image, some, mask], 1))
    assert a.shape == (1, 1, *size) and (a - b).abs().max() > 1e-4  # the channel changes the answer
    with_mask = FANet(spatial_dims, 1, 1, channels=(4, 8, 8, 8), reviewed_input=True, mask_input=True)
    first_conv = next(p for n, p in with_mask.named_parameters() if n.startswith("encoder.0") and p.ndim > 2)
    assert first_conv.shape[1] == 3
    with pytest.raises(ValueError, match="1 image channels \\+ 1 reviewed channel \\+ 1 feedback-mask channel = 3"):
        net(torch.cat([image, mask], 1))
    with pytest.raises(ValueError, match="reviewed_input must be true or false, got 'yes'"):
        FANet(spatial_dims, 1, 1, channels=(4, 8, 8, 8), reviewed_input="yes")
    plain = FANet(spatial_dims, 1, 1, channels=(4, 8, 8, 8))
    assert plain.guided_channels == 1  # checkpoints of the paper's network are unchanged


def test_unrolled_training_feeds_image_reviewed_mask_and_keeps_reviewed_pixels():
    net = InputRecorder()
    images = torch.rand(2, 3, 12, 12)
    mask = torch.zeros(2, 1, 12, 12)
    mask[:, :, :4] = 1  # the corrected part: foreground the network would not keep by itself
    reviewed = torch.zeros(2, 1, 12, 12)
    reviewed[:, :, :6] = 1

    class Shrink(InputRecorder):  # predicts background everywhere: the reviewed pixels must survive in the fed mask
        def forward(self, x):
            super().forward(x)
            return -4.0 * torch.ones_like(x[:, -1:])

    net = Shrink()
    UnrolledFeedbackInferer(num_passes=3)(images, net, mask=mask, reviewed=reviewed)
    assert len(net.inputs) == 3
    for k, x in enumerate(net.inputs):
        assert x.shape == (2, 5, 12, 12)
        assert torch.equal(x[:, :3], images) and torch.equal(x[:, 3:4], reviewed)
        expected = mask if k == 0 else torch.where(reviewed > 0, mask, torch.zeros_like(mask))
        assert torch.equal(x[:, 4:], expected), k
    net.inputs.clear()
    UnrolledFeedbackInferer(num_passes=2)(images, net, mask=mask)  # without: image and mask only
    assert all(x.shape == (2, 4, 12, 12) for x in net.inputs)
    with pytest.raises(ValueError, match=r"reviewed must have shape \(2, 1, 12, 12\)"):
        UnrolledFeedbackInferer(num_passes=2)(images, net, mask=mask, reviewed=reviewed[:, :, :6])


def test_refinement_feeds_the_annotators_reviewed_pixels():
    torch.manual_seed(0)
    images = torch.rand(1, 3, 32, 32)
    labels = torch.zeros(1, 1, 32, 32)
    labels[:, :, 4:12, 4:12] = 1
    reviewed = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    reviewed[:, :, :16] = True
    constraint = AnnotatorConstraint(labels, reviewed)
    for inner in (None, SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=2, overlap=0.25)):
        net = InputRecorder()
        inferer = IterativeRefinementInferer(num_passes=2, reviewed_channel=True, inner=inner, refine_margin=2)
        inferer.refine(images, net, constraint=constraint)
        # the start mask comes from the image channels alone (Otsu), the channel is what the annotator reviewed,
        # not the wider region that refine_margin keeps as sent
        if inner is None:
            first = net.inputs[0]
            assert first.shape == (1, 5, 32, 32)
            assert torch.equal(first[:, 3:4], reviewed.float())
            assert torch.equal(first[:, 4:], start_mask(images, "otsu"))
        else:  # windows: each window carries its part of the reviewed channel
            assert all(x.shape[1] == 5 for x in net.inputs)
            assert sum(float(x[:, 3].sum()) for x in net.inputs) > 0
        net.inputs.clear()
        inferer.refine(images, net)  # no annotator: zeros
        assert all(x.shape[1] == 5 and not x[:, 3].any() for x in net.inputs)
    # the MONAI Label route: the label and its reviewed mask arrive as the inputs' last two channels
    net = InputRecorder()
    channels = IterativeRefinementInferer(num_passes=1, start_mask="annotator_channels", reviewed_channel=True)
    channels(torch.cat([images, labels, reviewed.float()], 1), net)
    assert torch.equal(net.inputs[0][:, 3:4], reviewed.float()) and torch.equal(net.inputs[0][:, 4:], labels)


def test_bundle_trains_infers_and_evaluates_a_reviewed_network(tmp_path):
    """Through the CLI: the run records ``reviewed_input`` and ``infer`` / ``evaluate`` rebuild the network from it
    (packaging and the MONAI Label environment: ``tests/test_packaged_bundle.py``)."""
    data = make_synthetic_dataset(tmp_path / "data", num_images=6, height=32, width=32, seed=0)
    root = tmp_path / "run"
    tiny = ["--num_workers", "0", "--num_passes", "2", "--network_def#channels", "[4,8,8,8]"]
    assert run(["train", str(data), "--bundle_root", str(root), "--max_epochs", "2", "--batch_size", "2",
                "--show_progress", "False", "--image_size", "[32,32]", "--reviewed_input", "True",
                "--mask_mix", "annotator_errors", "--unroll_random", "True", *tiny]) == 0
    release_claims()
    record = json.loads((root / "run.json").read_text())
    assert record["settings"]["reviewed_input"] is True
    weights = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert weights["encoder.0.blocks.0.residual.0.conv.weight"].shape[1] == 4  # RGB + the reviewed channel
    # infer rebuilds the reviewed network from the run's record (no option needed)
    assert run(["infer", str(data / "images"), "--bundle_root", str(root), "--output_dir", str(tmp_path / "pred"),
                "--num_workers", "0"]) == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 6
    assert run(["evaluate", str(data), "--bundle_root", str(root), "--num_workers", "0"]) == 0
    release_claims()
