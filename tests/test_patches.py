"""Patch mode (issue 19): training on patches at native size with a feedback cache that follows each patch, and
refinement by sliding windows over the whole image."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandFlipd, allow_missing_keys_mode
from PIL import Image

from fanet_monai.cli import run
from fanet_monai.data import make_synthetic_dataset
from fanet_monai.data.patches import (
    check_input_mode,
    evaluation_batch_size,
    label_resize_mode,
    patch_sampling,
    resizing,
    window_inferer,
)
from fanet_monai.feedback.cache import FeedbackMaskCache
from fanet_monai.feedback.inversion import CacheFrameInverse
from fanet_monai.feedback.transforms import FeedbackMaskd
from fanet_monai.inferers import IterativeRefinementInferer
from fanet_monai.run import release_claims

KEYS = ["image", "label", "mask"]


def _sample(shape=(40, 52), name="a.png"):
    image = MetaTensor(torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(1, *shape) / np.prod(shape),
                       meta={"filename_or_obj": name})
    label = MetaTensor((torch.rand(1, *shape, generator=torch.Generator().manual_seed(0)) > 0.7).float(),
                       meta=dict(image.meta))
    return {"image": image, "label": label}


def _invert(transform, mask, values=None):
    """``values`` (default: ``mask``) carried back through ``transform`` with ``mask``'s trace."""
    values = mask if values is None else MetaTensor(values, meta=dict(mask.meta),
                                                   applied_operations=mask.applied_operations)
    with allow_missing_keys_mode(transform):
        return transform.inverse({"mask": values})["mask"]


def test_modes_are_checked_and_resize_mode_is_unchanged():
    with pytest.raises(ValueError, match="input_mode must be one of"):
        check_input_mode("tiles")
    assert patch_sampling("resize", [32, 32]) == [] and window_inferer("resize", [32, 32]) is None
    assert len(resizing("resize", [16, 16]).transforms) == 1 and len(resizing("patch", [16, 16]).transforms) == 0
    assert evaluation_batch_size("resize", 4) == 4 and evaluation_batch_size("patch", 4) == 1
    with pytest.raises(ValueError, match="patches_per_image"):
        patch_sampling("patch", [8, 8], num_samples=0)
    assert label_resize_mode("area") == "area" and label_resize_mode("area", num_classes=3) == "nearest"
    with pytest.raises(ValueError, match="resize_label_mode"):
        label_resize_mode("cubic")


def test_resize_mode_keeps_thin_lines_in_area_resized_labels():
    """The resize-pipeline fix: a 1-px line survives as a soft target with its area (area), while nearest keeps or
    drops it whole depending on where the sampling grid falls."""
    label = torch.zeros(1, 90, 90)
    label[:, :, 45] = 1.0  # a vertical 1-px line
    d = {"image": torch.rand(3, 90, 90), "label": label}
    area = resizing("resize", [40, 40], interpolation=["bilinear", label_resize_mode("area")], anti_aliasing=True)(d)
    nearest = resizing("resize", [40, 40], interpolation=["bilinear", "nearest"])(d)
    assert 0 < float(area["label"].max()) < 1  # a soft target: the fraction of each pixel the line covers
    assert int((area["label"][0] > 0).any(dim=1).sum()) == 40  # present in every row
    assert float(nearest["label"].sum()) in (0.0, 40.0)  # all or nothing, depending on where the grid falls


@pytest.mark.parametrize("shape, patch", [((40, 52), (16, 24)), ((12, 20, 16), (8, 8, 8)), ((10, 30), (16, 16))])
def test_a_patch_inverted_lands_where_it_was_cut_with_zeros_elsewhere(shape, patch):
    """2-D and 3-D, and an image smaller than the patch (padded first): the pad + crop are inverted exactly."""
    d = _sample(shape)
    d["mask"] = d["image"].clone()
    transform = Compose(patch_sampling("patch", patch, num_samples=3, keys=KEYS))
    transform.set_random_state(1)
    patches = transform(d)
    assert len(patches) == 3
    for p in patches:
        assert tuple(p["image"].shape[1:]) == patch
        back = _invert(transform, p["mask"])
        assert tuple(back.shape[1:]) == shape
        inside = back != 0
        assert torch.equal(back[inside], d["image"][inside])  # values at their own positions
        assert 0 < int(inside.sum()) <= int(np.prod(patch))


def _inverse(update_policy="every_epoch"):
    cache = FeedbackMaskCache(update_policy)
    transform = Compose([FeedbackMaskd("image", cache, initial="empty"),
                         *patch_sampling("patch", (16, 16), num_samples=2, keys=KEYS),
                         RandFlipd(KEYS, prob=1.0, spatial_axis=1)])
    transform.set_random_state(3)
    return cache, transform, CacheFrameInverse(transform, cache)


@pytest.mark.parametrize("update_policy", ["every_epoch", "on_improvement"])
def test_the_cache_takes_each_patch_back_into_its_region_and_keeps_the_rest(update_policy):
    cache, transform, inverse = _inverse(update_policy)
    d = _sample((40, 52))
    cache.put("a.png", np.zeros((1, 40, 52), np.uint8))
    cache.commit()
    patches = transform(d)
    regions = []
    for p in patches:  # the network predicts foreground everywhere on each patch
        key, mask = inverse.to_cache_frame(p["mask"], torch.full((1, 16, 16), 10.0))
        assert key == "a.png" and mask.shape == (1, 40, 52)
        cache.put(key, mask)
        covered = _invert(transform, p["mask"], torch.ones(1, 16, 16))
        regions.append(covered[0].numpy() > 0.5)
    cache.commit()
    stored = cache.get("a.png")[0].astype(bool)
    assert np.array_equal(stored, regions[0] | regions[1])  # both patches, nothing outside them
    assert 0 < stored.sum() < stored.size


def test_where_patches_overlap_the_patch_stored_last_wins():
    cache, transform, inverse = _inverse()
    d = _sample((20, 20))
    cache.put("a.png", np.zeros((1, 20, 20), np.uint8))
    first, second = transform(d)
    cache.put(*inverse.to_cache_frame(first["mask"], torch.full((1, 16, 16), 10.0)))
    cache.put(*inverse.to_cache_frame(second["mask"], torch.full((1, 16, 16), -10.0)))
    one, two = (_invert(transform, p["mask"], torch.ones(1, 16, 16))[0].numpy() > 0.5 for p in (first, second))
    assert (one & two).any()  # 16x16 patches of a 20x20 image overlap
    assert np.array_equal(cache.get("a.png")[0].astype(bool), one & ~two)


class _Echo(torch.nn.Module):
    """A pointwise 'network': its logits are +/-5 where the fed mask is 1/0, so each pass returns its input mask."""

    def forward(self, x):
        return (x[:, -1:] - 0.5) * 10.0


@pytest.mark.parametrize("shape", [(1, 3, 70, 90), (1, 1, 20, 28, 24)])
def test_sliding_window_refinement_feeds_each_window_its_part_of_the_whole_image_start_mask(shape):
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(2))
    images[..., : shape[-1] // 2] += 1.0  # a bright half: Otsu of the whole image finds it
    roi = [16] * (len(shape) - 2)
    windowed = IterativeRefinementInferer(num_passes=2, start_mask="otsu", inner=window_inferer("patch", roi))
    whole = IterativeRefinementInferer(num_passes=2, start_mask="otsu")
    with torch.no_grad():
        assert torch.allclose(windowed(images, _Echo()), whole(images, _Echo()), atol=1e-4)
        start = (windowed(images, _Echo()) > 0).float()
    assert torch.equal(start, windowed.make_start_mask(images))


def test_an_image_smaller_than_a_window_is_padded_and_said_once(caplog):
    inferer = window_inferer("patch", [32, 32])
    with caplog.at_level(logging.INFO), torch.no_grad():
        for _ in range(2):
            out = inferer(torch.rand(1, 4, 20, 40), _Echo())
    assert out.shape == (1, 1, 20, 40)
    assert sum("smaller than the (32, 32) window" in r.message for r in caplog.records) == 1


TINY = ["--num_workers", "0", "--num_passes", "2", "--batch_size", "2", "--show_progress", "False",
        "--network_def#channels", "[8,16,16,16]", "--input_mode", "patch", "--patch_size", "[32,32]",
        "--patches_per_image", "2"]


@pytest.mark.slow
def test_patch_mode_end_to_end_train_resume_evaluate_infer_at_native_size(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "data", num_images=8, height=40, width=72, seed=4)
    # a smaller image among them: padded to the patch, said once
    Image.fromarray(np.zeros((24, 30, 3), np.uint8)).save(data / "images" / "small.png")
    Image.fromarray(np.zeros((24, 30), np.uint8)).save(data / "masks" / "small.png")
    root = tmp_path / "run"
    assert run(["train", str(data), "--bundle_root", str(root), "--max_epochs", "1", *TINY]) == 0
    release_claims()
    out = capsys.readouterr().out
    assert "smaller than the (32, 32) patch" in out
    state = torch.load(root / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    cache = FeedbackMaskCache()
    cache.load_state_dict(state["feedback_cache"])
    shapes = {k: cache.get(k).shape for k in cache.keys()}
    # native frames (MONAI's bitmap reading puts width first)
    assert shapes["small.png"] == (1, 30, 24) and set(shapes.values()) == {(1, 30, 24), (1, 72, 40)}
    assert run(["train", str(data), "--bundle_root", str(root), "--resume", "True", "--max_epochs", "2"]) == 0
    release_claims()
    assert (root / "models" / "checkpoint_epoch=2.pt").is_file()
    assert run(["evaluate", str(data), "--bundle_root", str(root), "--num_workers", "0", "--num_passes", "2"]) == 0
    with open(root / "eval" / "metrics_per_pass.csv") as f:
        assert [r["pass"] for r in csv.DictReader(f)] == ["1", "2", "early_stop"]
    masks = tmp_path / "masks"
    assert run(["infer", str(data / "images"), str(masks), "--bundle_root", str(root), "--num_workers", "0"]) == 0
    assert 'input_mode="patch"' in capsys.readouterr().out  # taken from the run
    sizes = {p.name: np.asarray(Image.open(p)).shape for p in masks.glob("*.png")}
    assert sizes["small.png"] == (24, 30) and len(sizes) == 9
    assert all(s == (40, 72) for n, s in sizes.items() if n != "small.png")
    # the speck filter on the saved masks: every component left has >= 12 pixels, nothing else changed
    cleaned = tmp_path / "cleaned"
    assert run(["infer", str(data / "images"), str(cleaned), "--bundle_root", str(root), "--num_workers", "0",
                "--min_object_size", "12"]) == 0
    from skimage.measure import label as components

    for path in masks.glob("*.png"):
        before, after = np.asarray(Image.open(path)) > 0, np.asarray(Image.open(cleaned / path.name)) > 0
        assert not (after & ~before).any()
        kept = components(after, connectivity=2)
        assert all(np.sum(kept == i) >= 12 for i in range(1, kept.max() + 1))
        dropped = components(before & ~after, connectivity=2)
        assert all(np.sum(dropped == i) < 12 for i in range(1, dropped.max() + 1))
    assert run(["infer", str(data / "images"), str(cleaned), "--bundle_root", str(root), "--min_object_size",
                "-3"]) == 2
    assert "--min_object_size -3: expected a whole number >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_volumes_train_evaluate_infer_in_patch_mode_with_the_volume_config(tmp_path, capsys):
    """3-D end to end (``train.json``/``evaluate.json``/``inference.json`` + ``volume.json``): patches of 16³, the
    cache in each volume's own frame, masks written on the input's grid."""
    import nibabel as nib

    from fanet_monai.bundle import bundle_configs, run_workflow
    from fanet_monai.data import make_volume_dataset

    data = make_volume_dataset(tmp_path / "data", num_volumes=6, shape=(20, 24, 28), kind="tubes",
                               spacing=(1.0, 1.5, 2.0), seed=0)
    tiny = {"bundle_root": str(tmp_path / "run"), "num_workers": 0, "num_passes": 2, "patch_size": [16, 16, 16],
            "network_def#channels": [4, 8, 8, 8]}
    workflow = run_workflow(bundle_configs("train", "volume"), "training", dataset_dir=str(data), max_epochs=1,
                            batch_size=2, show_progress=False, **tiny)
    release_claims()
    cache = workflow.parser.get_parsed_content("feedback_cache")
    assert len(cache) == 5 and {cache.get(k).shape for k in cache.keys()} == {(1, 20, 24, 28)}
    assert workflow.parser.get_parsed_content("network_def").spatial_dims == 3
    # resume in 3-D: the cache comes back from the checkpoint (same volumes' masks) and epoch 2 updates it
    before = {k: cache.get(k).copy() for k in cache.keys()}
    capsys.readouterr()
    resumed = run_workflow(bundle_configs("train", "volume"), "training", dataset_dir=str(data), max_epochs=2,
                           batch_size=2, show_progress=False, resume=True, **tiny)
    release_claims()
    console = capsys.readouterr()
    assert "feedback cache: 5 masks (0 given the start mask)" in console.out + console.err  # restored, not restarted
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == 2
    state = torch.load(tmp_path / "run" / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    after = FeedbackMaskCache()
    after.load_state_dict(state["feedback_cache"])
    assert set(after.keys()) == set(before) and {after.get(k).shape for k in after.keys()} == {(1, 20, 24, 28)}
    run_workflow(bundle_configs("train", "evaluate", "volume"), "evaluating", dataset_dir=str(data), **tiny)
    with open(tmp_path / "run" / "eval" / "metrics_per_pass.csv") as f:
        assert [r["pass"] for r in csv.DictReader(f)] == ["1", "2", "early_stop"]
    out = tmp_path / "masks"
    run_workflow(bundle_configs("inference", "volume"), "run", dataset_dir=str(data / "images"), output_dir=str(out),
                 **tiny)
    written = sorted(out.rglob("*.nii.gz"))
    assert len(written) == 6
    for path in written:
        mask, source = nib.load(path), nib.load(data / "images" / path.name)
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)


def test_one_channel_input_for_volumes_and_grayscale_networks():
    from fanet_monai.data.transforms import AsRGBd, to_grayscale_torch

    rgb = torch.rand(3, 4, 5)
    gray = AsRGBd("image", channels=1)({"image": rgb})["image"]
    assert gray.shape == (1, 4, 5) and torch.allclose(gray, to_grayscale_torch(rgb[None])[0])
    assert AsRGBd("image", channels=1)({"image": torch.rand(2, 3, 4, 5)})["image"].shape == (1, 3, 4, 5)  # gray+alpha
    volume = torch.rand(1, 6, 7, 8)
    assert torch.equal(AsRGBd("image", channels=1)({"image": volume})["image"], volume)
    assert AsRGBd("image")({"image": volume})["image"].shape == (3, 6, 7, 8)
    with pytest.raises(ValueError, match="channels must be 1"):
        AsRGBd("image", channels=2)


def test_volume_inference_inputs_are_checked_first(tmp_path):
    import nibabel as nib

    from fanet_monai.data.files import DataCheckError
    from fanet_monai.data.inputs import check_inputs

    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 9, 10), np.float32), np.eye(4)), good)
    flat = tmp_path / "flat.png"
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(flat)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(good.read_bytes()[:400])  # cut inside the compressed voxels
    items = [{"image": str(p)} for p in (good, flat, broken)]
    with pytest.raises(DataCheckError) as refused:
        check_inputs(items, spatial_dims=3)
    message = str(refused.value)
    assert "2 of 3 input images cannot be used" in message and "good.nii.gz" not in message
    assert "flat.png: expected a 3-D volume, got array shape" in message
    assert "broken.nii.gz: unreadable volume" in message
    assert [i["image"] for i in check_inputs(items, skip_bad=True, spatial_dims=3).good] == [str(good)]


@pytest.mark.slow
def test_the_vessel_demo_runs_in_patch_mode(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run(["demo", "--out_dir", str(out), "--data", "vessels", "--num_images", "6", "--size", "64",
                "--max_epochs", "1", "--num_workers", "0", "--num_passes", "2",
                "--network_def#channels", "[8,16,16,16]"]) == 0
    printed = capsys.readouterr().out
    assert "6 vessels images of 64x64" in printed and "| stored |" in printed
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["input_mode"] == "patch" and settings["patch_size"] == [32, 32]
    assert run(["demo", "--out_dir", str(out), "--data", "stars"]) == 2
    assert "choose blobs (resize mode) or vessels (patch mode)" in capsys.readouterr().err


def test_an_input_too_large_for_memory_is_refused_before_its_voxels_are_read(tmp_path, monkeypatch):
    import nibabel as nib

    import fanet_monai.data.inputs as inputs
    from fanet_monai.data.files import DataCheckError

    volume = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 50, 60), np.float32), np.eye(4)), volume)
    image = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 200, 3), np.uint8)).save(image)
    per_pixel = inputs.BUFFERS_PER_VOXEL * 4
    assert inputs.inference_bytes((40, 50, 60), 1) == 40 * 50 * 60 * (per_pixel + 4)
    monkeypatch.setattr(inputs, "available_memory", lambda: 2 * 40 * 50 * 60 * 4)
    monkeypatch.setattr(inputs, "LoadImage", None)  # the header alone must decide
    with pytest.raises(DataCheckError, match=r"big.nii.gz: a 40x50x60 input needs about .* GiB to refine"):
        inputs.check_inputs([{"image": str(volume)}], spatial_dims=3)
    monkeypatch.setattr(inputs, "available_memory", lambda: 300 * 200 * (per_pixel + 12) - 1)
    with pytest.raises(DataCheckError, match="big.png: a 300x200 input needs"):
        inputs.check_inputs([{"image": str(image)}])
    monkeypatch.setattr(inputs, "available_memory", lambda: 300 * 200 * (per_pixel + 12))
    assert len(inputs.check_inputs([{"image": str(image)}]).good) == 1


def test_small_object_removal_clears_specks_keeps_class_codes_and_full_connectivity():
    from fanet_monai.outputs import small_object_removal

    plane = torch.zeros(1, 12, 12)
    plane[0, 1, 1] = 1  # a 1-px speck: removed
    plane[0, 5:8, 5:8] = 2  # a 9-px class-2 blob: kept with its code
    plane[0, 8, 8] = 1  # touches the blob only at a corner: 8-connected to it, kept
    out = small_object_removal(4, spatial_dims=2)({"pred": plane})["pred"]
    expected = plane.clone()
    expected[0, 1, 1] = 0
    assert torch.equal(out, expected)
    assert small_object_removal(0, spatial_dims=2)({"pred": plane})["pred"] is plane  # 0: off, the identity

    volume = torch.zeros(1, 8, 8, 8)
    volume[0, 1:4, 1:4, 1:4] = 1  # 27 voxels
    volume[0, 4, 4, 4] = 1  # corner-touching: 26-connected to the cube
    volume[0, 6, 0, 6] = 1  # alone: removed
    out = small_object_removal(5, spatial_dims=3)({"pred": volume})["pred"]
    assert out.sum() == 28 and out[0, 4, 4, 4] == 1 and out[0, 6, 0, 6] == 0
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="min_object_size must be a whole number"):
            small_object_removal(bad, spatial_dims=2)
