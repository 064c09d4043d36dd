"""The paper's augmentation: every transform keeps image, label and feedback mask aligned, every spatial one is
inverted by the feedback handler back into the cache frame, non-invertible ones are rejected, and the paper-like
pipeline trains in the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, Rand2DElasticd, RandGridDistortiond, RandRotated

from fanet_monai.bundle import bundle_configs, load_workflow
from fanet_monai.data.augmentation import (
    PAPER_PROBS,
    RandCropResized,
    RandElasticd,
    RandGridDistortd,
    RandOpticalDistortd,
    RandWarpd,
    check_feedback_augmentation,
    paper_augmentation,
)
from fanet_monai.data import make_synthetic_dataset
from fanet_monai.feedback import FeedbackMaskCache
from fanet_monai.feedback.handler import FeedbackMaskHandler
from fanet_monai.feedback.transforms import FeedbackMaskd

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
KEYS = ["image", "label", "mask"]
SPATIAL = ["crop", "rotate", "flip_h", "flip_v", "elastic", "grid", "optical"]
INTENSITY = ["grayscale", "channel_shuffle", "brightness", "contrast", "dropout"]


def shape_label(h=48, w=64):
    """An asymmetric shape (an L plus a disc) so that flips, rotations and warps all show."""
    label = torch.zeros(1, h, w)
    label[0, 8:36, 10:18] = 1
    label[0, 28:36, 10:40] = 1
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    label[0][((yy - 16) ** 2 + (xx - 48) ** 2) <= 49] = 1
    return label


def sample(label):
    meta = {"filename_or_obj": "/data/images/shape.png"}
    image = torch.cat([label * 1.0, 0.2 + 0.6 * label, 0.9 - 0.5 * label])  # channel 0 = label
    return {"image": MetaTensor(image, meta=dict(meta)), "label": MetaTensor(label.clone(), meta=dict(meta))}


def one(name, seed=0, **kwargs):
    transforms = paper_augmentation((48, 64), prob={n: float(n == name) for n in PAPER_PROBS}, **kwargs)
    return Compose(transforms).set_random_state(seed)


def dice(a, b):
    a, b = a > 0.5, b > 0.5
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


@pytest.mark.parametrize("name", SPATIAL)
@pytest.mark.parametrize("seed", [0, 1])
def test_spatial_transforms_keep_image_label_mask_aligned_and_invert(name, seed):
    label = shape_label()
    cache = FeedbackMaskCache()
    cache.put("shape.png", label.numpy().astype(np.uint8))  # the fed mask = the label, to see alignment
    augmentation = one(name, seed).transforms
    assert len(augmentation) == 1
    transform = Compose([FeedbackMaskd("image", cache), *augmentation]).set_random_state(seed)
    handler = FeedbackMaskHandler(cache, transform=transform)
    data = sample(label)
    original = data["image"].as_tensor().clone()
    out = transform(data)
    assert not torch.allclose(out["image"].as_tensor(), original), f"{name} with probability 1 changed nothing"
    assert torch.equal(out["mask"].as_tensor(), out["label"].as_tensor())  # mask and label: same nearest warp
    assert dice(out["image"][0], out["label"][0]) > 0.9  # image (bilinear) on top of them
    # the handler maps a prediction made on the augmented view back into the cache frame
    key, back = handler.inverse.to_cache_frame(out["mask"], 20.0 * (out["label"] * 2 - 1))
    assert key == "shape.png" and back.shape == (1, 48, 64)
    assert dice(torch.as_tensor(back[0]), label[0]) > 0.9


@pytest.mark.parametrize("name", INTENSITY)
def test_intensity_transforms_touch_the_image_only(name):
    label = shape_label()
    data = sample(label)
    data["mask"] = MetaTensor(label.clone())
    original = data["image"].as_tensor().clone()  # (coarse dropout fills the holes in place)
    out = one(name, seed=3)(data)
    assert torch.equal(out["label"].as_tensor(), label) and torch.equal(out["mask"].as_tensor(), label)
    image = out["image"].as_tensor()
    assert image.shape == (3, 48, 64)
    if name != "channel_shuffle":  # (a shuffle may draw the identity)
        assert not torch.equal(image, original)
    if name != "dropout":  # still a function of the label, pixel by pixel: constant inside, constant outside
        for region in (label[0] > 0, label[0] == 0):
            assert float(image[:, region].std(dim=1).max()) < 1e-5
        assert float(image.min()) >= 0 and float(image.max()) <= 1
    else:
        changed = (image != original).any(0)
        assert changed.any() and float(image[:, changed].abs().max()) == 0  # holes filled with 0


def test_warps_invert_exactly_or_nearly():
    coords = torch.stack(torch.meshgrid(torch.linspace(-0.9, 0.9, 15, dtype=torch.float64),
                                        torch.linspace(-0.9, 0.9, 17, dtype=torch.float64), indexing="ij"), -1)
    for cls in (RandCropResized, RandElasticd, RandGridDistortd, RandOpticalDistortd):
        warp = cls(["image"], prob=1.0)
        for seed in range(5):
            warp.set_random_state(seed)
            params = warp.sample_params()
            there = warp.forward_map(coords, params)
            assert float((warp.inverse_map(there, params) - coords).abs().max()) < 1e-4, cls.__name__


def test_full_pipeline_keeps_alignment_and_is_seeded():
    label = shape_label()
    augment = Compose(paper_augmentation((48, 64), prob=0.5)).set_random_state(7)
    changed = 0
    for _ in range(6):
        data = sample(label)
        data["mask"] = MetaTensor(label.clone(), meta={"filename_or_obj": "/data/images/shape.png"})
        out = augment(data)
        assert torch.equal(out["mask"].as_tensor(), out["label"].as_tensor())
        changed += not torch.equal(out["label"].as_tensor(), label)
    assert changed >= 3
    first = Compose(paper_augmentation((48, 64), prob=0.5)).set_random_state(1)(sample(label))
    second = Compose(paper_augmentation((48, 64), prob=0.5)).set_random_state(1)(sample(label))
    assert torch.equal(first["image"].as_tensor(), second["image"].as_tensor())


def test_monai_elastic_and_grid_distortion_are_not_invertible_and_rejected():
    label = shape_label()
    data = sample(label)
    data["mask"] = MetaTensor(label.clone(), meta={"filename_or_obj": "/data/images/shape.png"})
    elastic = Rand2DElasticd(KEYS, spacing=(12, 12), magnitude_range=(2, 3), prob=1.0, mode=["bilinear", "nearest", "nearest"],
                             padding_mode="zeros")
    elastic.set_random_state(0)
    out = Compose([elastic])(data)
    assert not torch.equal(out["mask"].as_tensor(), label)
    # MONAI's Compose.inverse skips it silently: the "inverted" mask stays deformed, no error
    with pytest.warns(UserWarning, match="no invertible transforms"):
        inverted = Compose([elastic]).inverse({"mask": out["mask"]})["mask"]
    assert torch.equal(inverted.as_tensor(), out["mask"].as_tensor())
    for transform in (elastic, RandGridDistortiond(KEYS, prob=1.0)):
        with pytest.raises(ValueError, match=f"{type(transform).__name__} moves the feedback mask 'mask' but is not "
                                             "invertible"):
            check_feedback_augmentation([transform])
    with pytest.raises(ValueError, match="RandRotated moves the image 'image' but not the feedback mask"):
        check_feedback_augmentation([RandRotated(["image", "label"], range_x=0.3, prob=1.0)])
    transforms = paper_augmentation()
    assert check_feedback_augmentation(transforms) == transforms
    assert all(isinstance(t, RandWarpd) for t in transforms if type(t).__name__ in
               ("RandCropResized", "RandElasticd", "RandGridDistortd", "RandOpticalDistortd"))


def test_probabilities_and_names():
    transforms = paper_augmentation(prob={"elastic": 0.0}, include=["crop", "elastic", "brightness", "dropout"])
    assert [type(t).__name__ for t in transforms] == [
        "RandCropResized", "RandShiftIntensityd", "ScaleIntensityRanged", "RandCoarseDropoutd"]
    assert transforms[0].prob == PAPER_PROBS["crop"]
    assert all(getattr(t, "prob", 0.25) == 0.25 for t in paper_augmentation(prob=0.25))
    with pytest.raises(ValueError, match="unknown augmentation names"):
        paper_augmentation(prob={"blur": 0.1})


# -- in the bundle ---------------------------------------------------------------------------------------------------
def workflow(tmp_path, dataset, **extra):
    overrides = {
        "bundle_root": str(tmp_path), "dataset_dir": str(dataset), "image_size": [32, 32], "batch_size": 4,
        "num_workers": 0, "max_epochs": 1, "num_passes": 1, "show_progress": False,
        "network_def#channels": [8, 8, 8, 8],
    }
    overrides.update(extra)
    return load_workflow(bundle_configs("train"), **overrides)


def test_paper_augmentation_trains_one_epoch_in_the_bundle(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_images=8, height=32, width=32, seed=2)
    wf = workflow(tmp_path / "run", data, augmentation="paper", augmentation_prob=0.5)
    names = [type(t).__name__ for t in wf.parser.get_parsed_content("train#augmentation")]
    assert {"RandCropResized", "RandElasticd", "RandGridDistortd", "RandOpticalDistortd", "RandGrayscaled",
            "RandChannelShuffled", "RandCoarseDropoutd"} <= set(names)
    wf.run()
    assert wf.parser.get_parsed_content("train#trainer").state.epoch == 1
    cache = wf.parser.get_parsed_content("feedback_cache")
    assert len(cache) == 6 and all(cache.get(k).shape == (1, 32, 32) for k in cache.keys())
    assert (tmp_path / "run" / "models" / "model.pt").is_file()


def test_augmentation_choice_and_rejection_in_the_bundle(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_images=4, height=32, width=32, seed=2)
    light = workflow(tmp_path / "a", data).parser.get_parsed_content("train#augmentation")
    assert [type(t).__name__ for t in light] == ["RandRotated", "RandFlipd", "RandFlipd", "RandCoarseDropoutd"]
    assert workflow(tmp_path / "b", data, augmentation="none").parser.get_parsed_content("train#augmentation") == []
    bad = {"_target_": "Rand2DElasticd", "keys": KEYS, "spacing": [8, 8], "magnitude_range": [1, 2], "prob": 0.5}
    with pytest.raises(Exception) as error:
        workflow(tmp_path / "c", data, **{"train#augmentations#light": [bad]})
    assert any("Rand2DElasticd moves the feedback mask" in text for text in causes(error.value))
    assert not (tmp_path / "c").exists()
    with pytest.raises(Exception) as error:
        workflow(tmp_path / "d", data, augmentation="heavy")
    assert any("augmentation must be one of light, paper, none" in text for text in causes(error.value))


def causes(error):
    while error is not None:
        yield str(error)
        error = error.__cause__ or error.__context__


def test_presets_set_size_and_learning_rate():
    cases = {"default": ([256, 256], 1e-4), "drive": ([512, 512], 1e-3), "chase-db1": ([512, 512], 1e-3),
             "cvc-clinicdb": ([256, 256], 1e-4), "dsb2018": ([256, 256], 1e-4), "kvasir-seg": ([512, 512], 1e-4),
             "isic2018": ([512, 512], 1e-4), "em-isbi2012": ([512, 512], 1e-4), "CHASE": ([512, 512], 1e-3)}
    for config in ("train.json", "inference.json"):
        for preset, (size, lr) in cases.items():
            parser = ConfigParser()
            parser.read_config(str(CONFIGS / config))
            parser["preset"] = preset
            assert parser.get_parsed_content("image_size") == size
            if config == "train.json":
                assert parser.get_parsed_content("learning_rate") == lr
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"preset": "drive", "learning_rate": 5e-4})
    assert parser.get_parsed_content("image_size") == [512, 512] and parser.get_parsed_content("learning_rate") == 5e-4
    parser["preset"] = "nope"
    with pytest.raises(Exception) as error:
        parser.get_parsed_content("image_size", lazy=False)
    assert any("unknown preset 'nope'" in text for text in causes(error.value))
