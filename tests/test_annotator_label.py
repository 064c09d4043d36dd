"""Refine-my-mask that keeps the annotator's work (issue 22, item 1): the label's ``[codes, reviewed]`` channels,
the inferer's ``annotator_channels`` start, the final overwrite on the input's grid, and ``fanet infer
--start_mask_dir`` on 2-D images and volumes, where every reviewed pixel must come back exactly as drawn."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from dicom_support import INFER, smooth_rgb, tiny_volume_run
from fanet_monai import FANet
from fanet_monai.cli import FanetCLI, run
from fanet_monai.feedback.masks import discrete_prediction
from fanet_monai.inferers import AnnotatorConstraint, IterativeRefinementInferer
from fanet_monai.refine_label import (KeepAnnotatorLabeld, StartMaskFromLabeld, annotator_label,
                                      as_unreviewed_value, refinement_start)


def test_annotator_label_channels_binary_multiclass_and_unreviewed():
    raw = torch.tensor([[[0, 255, 128], [255, 0, 128]]], dtype=torch.float32)  # 0/255 PNG, 128 = not reviewed
    codes, reviewed = annotator_label(raw, unreviewed_value=128)
    assert torch.equal(codes, torch.tensor([[0.0, 1, 0], [1, 0, 0]]))
    assert torch.equal(reviewed, torch.tensor([[1.0, 1, 0], [1, 1, 0]]))
    codes, reviewed = annotator_label(torch.tensor([[[0.0, 1, 1], [0, 0, 1]]]))  # no value: drawn pixels only
    assert torch.equal(reviewed, codes) and codes.sum() == 3
    multi = torch.tensor([[[0.0, 2, 255], [1, 0, 255]]])
    codes, reviewed = annotator_label(multi, num_classes=2, unreviewed_value=255)
    assert torch.equal(codes, torch.tensor([[0.0, 2, 0], [1, 0, 0]]))
    assert torch.equal(reviewed, torch.tensor([[1.0, 1, 0], [1, 1, 0]]))
    assert as_unreviewed_value("255") == 255 and as_unreviewed_value("none") is None
    assert as_unreviewed_value(None) is None
    with pytest.raises(ValueError, match="unreviewed_value must be an integer"):
        as_unreviewed_value("half")
    assert refinement_start(True, "true", "otsu") == "annotator_channels"
    assert refinement_start("true", False, "otsu") == "last_channel"
    assert refinement_start(False, True, "otsu") == "otsu"


@pytest.mark.parametrize("spatial_dims,out_channels", [(2, 1), (3, 3)])
def test_reviewed_pixels_survive_every_pass_exactly(spatial_dims, out_channels):
    torch.manual_seed(0)
    shape = (16, 16) if spatial_dims == 2 else (16, 16, 16)
    net = FANet(spatial_dims, in_channels=1, out_channels=out_channels, channels=(4, 8, 8, 8)).eval()
    images = torch.rand(2, 1, *shape)
    classes = 2 if out_channels == 1 else out_channels
    codes = torch.randint(0, classes, (2, 1, *shape)).float()
    reviewed = torch.rand(2, 1, *shape) > 0.5
    inputs = torch.cat([images, codes, reviewed.float()], dim=1)
    inferer = IterativeRefinementInferer(num_passes=3, start_mask="annotator_channels", return_all_passes=True)
    with torch.no_grad():
        passes = inferer(inputs, net)
        explicit = IterativeRefinementInferer(num_passes=3, return_all_passes=True)(
            images, net, mask=(codes > 0).float(), constraint=AnnotatorConstraint(codes, reviewed))
    assert torch.equal(passes, explicit)
    for logits in passes:
        labels = discrete_prediction(logits)
        assert torch.equal(labels[reviewed], codes[reviewed])
    with pytest.raises(ValueError, match="do not pass mask= or constraint= too"):
        inferer(inputs, net, mask=codes)


def test_keep_annotator_label_overwrites_the_reviewed_pixels_on_the_input_grid():
    pred = torch.ones(1, 4, 5)
    kept = torch.zeros(2, 4, 5)
    kept[1, :2] = 1  # first two rows reviewed as background
    out = KeepAnnotatorLabeld("pred")({"pred": pred, "annotator_label": kept})["pred"]
    assert out[0, :2].sum() == 0 and out[0, 2:].sum() == 10
    assert KeepAnnotatorLabeld("pred")({"pred": pred})["pred"] is pred  # refine-my-mask off: nothing to keep
    with pytest.raises(ValueError, match="must follow Invertd"):
        KeepAnnotatorLabeld("pred")({"pred": torch.ones(1, 3, 5), "annotator_label": kept})
    local = torch.zeros(2, 8, 5)
    local[0, 5:] = 2  # the label as sent: class 2 in the bottom rows
    local[1, :2] = 1  # top two rows reviewed as background
    out = KeepAnnotatorLabeld("pred", margin=2)({"pred": torch.ones(1, 8, 5), "annotator_label": local})["pred"]
    assert out[0, :2].sum() == 0  # reviewed
    assert (out[0, 2:4] == 1).all()  # within 2 rows of them: the prediction
    assert (out[0, 4] == 0).all() and (out[0, 5:] == 2).all()  # farther: as sent


def test_start_mask_transform_appends_codes_and_reviewed_when_keeping():
    image = torch.rand(3, 6, 5)
    label = torch.zeros(1, 6, 5)
    label[0, :2] = 255
    label[0, 4:] = 128
    out = StartMaskFromLabeld("image", keep=True, unreviewed_value="128")({"image": image, "label": label})["image"]
    assert out.shape == (5, 6, 5)
    assert torch.equal(out[3], (label[0] == 255).float())
    assert torch.equal(out[4], (label[0] != 128).float())


def _inverse_partial_label(prediction: np.ndarray, reviewed_rows: int) -> np.ndarray:
    """A label the network disagrees with: the *inverse* of its own prediction in the first ``reviewed_rows`` rows
    (0/255), 128 ("not reviewed yet") below."""
    label = np.full(prediction.shape, 128, np.uint8)
    label[:reviewed_rows] = np.where(prediction[:reviewed_rows] > 0, 0, 255)
    return label


@pytest.mark.slow
def test_fanet_infer_keeps_every_reviewed_pixel_of_a_2d_label(tmp_path, tiny_bundle_root):
    """The issue's complaint, turned round: a label that contradicts the network comes back exactly where it was
    reviewed (and the old start-only route does not keep it), with the rest predicted."""
    images = tmp_path / "images"
    images.mkdir()
    for name, (h, w, seed) in {"a": (64, 64, 1), "b": (50, 62, 2)}.items():
        Image.fromarray(smooth_rgb(h, w, seed)).save(images / f"{name}.png")
    plain = tmp_path / "plain"
    FanetCLI().infer(str(images), str(plain), bundle_root=str(tiny_bundle_root), **INFER)
    labels = tmp_path / "labels"
    labels.mkdir()
    drawn = {}
    for name in ("a", "b"):
        predicted = np.asarray(Image.open(plain / f"{name}.png"))
        drawn[name] = _inverse_partial_label(predicted, predicted.shape[0] * 6 // 10)
        Image.fromarray(drawn[name]).save(labels / f"{name}.png")
    kept, start_only = tmp_path / "kept", tmp_path / "start_only"
    FanetCLI().infer(str(images), str(kept), bundle_root=str(tiny_bundle_root), start_mask_dir=str(labels),
                     unreviewed_value=128, **INFER)
    FanetCLI().infer(str(images), str(start_only), bundle_root=str(tiny_bundle_root), start_mask_dir=str(labels),
                     unreviewed_value=128, keep_annotator_label=False, **INFER)
    changed_without_keep = 0
    for name, label in drawn.items():
        out = np.asarray(Image.open(kept / f"{name}.png"))
        reviewed = label != 128
        assert out.shape == label.shape
        assert np.array_equal(out[reviewed] > 0, label[reviewed] == 255)  # exactly as drawn
        old = np.asarray(Image.open(start_only / f"{name}.png"))
        changed_without_keep += int(((old[reviewed] > 0) != (label[reviewed] == 255)).sum())
    assert changed_without_keep > 0  # the start-only route overrules the annotator somewhere
    local = tmp_path / "local"  # local refinement: nothing farther than 3 pixels from the reviewed rows changes
    FanetCLI().infer(str(images), str(local), bundle_root=str(tiny_bundle_root), start_mask_dir=str(labels),
                     unreviewed_value=128, refine_margin=3, **INFER)
    predicted_far = 0
    for name, label in drawn.items():
        out = np.asarray(Image.open(local / f"{name}.png"))
        rows = label.shape[0] * 6 // 10
        assert np.array_equal(out[:rows] > 0, label[:rows] == 255)  # reviewed: exactly as drawn
        assert not out[rows + 3:].any()  # far: as sent (not reviewed = no label = background)
        predicted_far += int((np.asarray(Image.open(kept / f"{name}.png"))[rows + 3:] > 0).sum())
    assert predicted_far > 0  # whole-image refinement does predict foreground there


@pytest.mark.slow
def test_fanet_infer_keeps_every_reviewed_voxel_of_a_volume_label(tmp_path):
    data, root = tiny_volume_run(tmp_path, num_passes=2)
    labels = tmp_path / "labels"
    labels.mkdir()
    drawn = {}
    for source in sorted((data / "images").iterdir()):
        image = nib.load(source)
        truth = np.asarray(nib.load(data / "masks" / source.name).dataobj).astype(np.uint8)
        label = np.full(truth.shape, 255, np.uint8)  # 255: not reviewed yet
        label[:, :, : truth.shape[2] // 2] = 1 - truth[:, :, : truth.shape[2] // 2]  # contradicts the truth
        nib.save(nib.Nifti1Image(label, image.affine), labels / source.name)
        drawn[source.name] = label
    out = tmp_path / "masks"
    assert run(["infer", str(data / "images"), str(out), "--bundle_root", str(root), "--num_workers", "0",
                "--start_mask_dir", str(labels), "--unreviewed_value", "255"]) == 0
    for name, label in drawn.items():
        result = np.asarray(nib.load(out / name).dataobj)
        reviewed = label != 255
        assert result.shape == label.shape
        assert np.array_equal(result[reviewed], label[reviewed])
