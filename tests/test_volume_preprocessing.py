"""3-D preprocessing as MONAI's model-zoo bundles do it (issue 20 item 2): orientation, target spacing (the
training set's median, recorded in the run), intensity by modality, foreground crop, caching of the preprocessed
volumes (never of the feedback mask), and predictions written back on the input's own grid."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureTyped, Invertd, LoadImaged

from fanet_monai.checkpoints import latest_intact_checkpoint
from fanet_monai.bundle import bundle_configs, load_workflow, run_workflow
from fanet_monai.data.synthetic_structures import make_blob_volume
from fanet_monai.data.caching import cached_prefix, preprocessed_dataset
from fanet_monai.data.volume_preprocessing import VolumeSettings, axis_spacing, intensity_transform, median_spacing
from fanet_monai.errors import InputError
from fanet_monai.feedback.cache import FeedbackMaskCache
from fanet_monai.feedback.transforms import FeedbackMaskd
from fanet_monai.run import RunOwner, release_claims

#: stored axes I-A-L (not RAS), anisotropic: RAS spacing [0.9, 1.2, 2.5] mm
PERMUTED = np.array([[0.0, 0.0, -0.9, 10.0], [0.0, 1.2, 0.0, -5.0], [-2.5, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0]])


def lps(spacing, origin=(4.0, -3.0, 7.0)) -> np.ndarray:
    """An L-P-S affine (ITK/DICOM's axis directions) with ``spacing``."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin
    return affine


def write_case(folder: Path, name: str, affine: np.ndarray, shape=(22, 20, 18), seed=0, pad=3) -> tuple[Path, Path]:
    """A blob volume (labels 0/1) on a zero background margin of ``pad`` voxels (MR-like), saved with ``affine``."""
    image, label = make_blob_volume([s - 2 * pad for s in shape], seed, num_classes=1, size=(0.25, 0.35))
    inner = tuple(slice(pad, s - pad) for s in shape)
    full_image, full_label = np.zeros(shape, np.float32), np.zeros(shape, np.uint8)
    full_image[inner], full_label[inner] = image + 0.5, label
    paths = folder / "images" / name, folder / "masks" / name
    for path, array in zip(paths, (full_image, full_label)):
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, affine), path)
    return paths


def test_spacing_is_read_per_axis_in_the_target_orientation_and_its_median_taken(tmp_path):
    assert axis_spacing(lps((0.7, 0.8, 3.0))) == pytest.approx([0.7, 0.8, 3.0])
    assert axis_spacing(PERMUTED) == pytest.approx([0.9, 1.2, 2.5])
    assert axis_spacing(PERMUTED, orientation=None) == pytest.approx([2.5, 1.2, 0.9])  # stored axis order
    assert axis_spacing(PERMUTED, orientation="SAR") == pytest.approx([2.5, 1.2, 0.9])
    paths = [write_case(tmp_path, f"c{i}.nii.gz", a, shape=(8, 8, 8), pad=1)[0]
             for i, a in enumerate([lps((1.0, 1.0, 2.0)), PERMUTED, np.diag([0.8, 1.4, 3.0, 1.0])])]
    assert median_spacing(paths) == pytest.approx([0.9, 1.2, 2.5])
    with pytest.raises(InputError, match="no training volumes"):
        median_spacing([])


def test_ct_window_and_mr_z_score_on_known_values():
    hu = torch.tensor([-3000.0, -1000.0, -500.0, 0.0, 1000.0, 2500.0]).reshape(1, 1, 2, 3)
    ct = intensity_transform("CT")({"image": hu})["image"]
    assert torch.allclose(ct.flatten(), torch.tensor([0.0, 0.0, 0.25, 0.5, 1.0, 1.0]))
    ct = intensity_transform("ct", ct_window=[-100, 300])({"image": hu})["image"]
    assert torch.allclose(ct.flatten(), torch.tensor([0.0, 0.0, 0.0, 0.25, 1.0, 1.0]))
    mr = torch.zeros(2, 2, 2, 3)
    mr[0, 0, 0, :] = torch.tensor([2.0, 4.0, 6.0])  # channel 0: mean 4, std sqrt(8/3) over its nonzero voxels
    mr[1, 1, 1, :2] = torch.tensor([10.0, 30.0])  # channel 1: mean 20, std 10
    z = intensity_transform("MR")({"image": mr})["image"]
    std = (8 / 3) ** 0.5
    assert torch.allclose(z[0, 0, 0], torch.tensor([-2 / std, 0.0, 2 / std]), atol=1e-5)
    assert torch.allclose(z[1, 1, 1, :2], torch.tensor([-1.0, 1.0]), atol=1e-5)
    assert float(z[mr == 0].abs().max()) == 0.0  # the background stays 0 (and is cropped away)
    other = intensity_transform("other")({"image": torch.linspace(0, 1000, 1001).reshape(1, 7, 11, 13)})["image"]
    assert float(other.min()) == 0.0 and float(other.max()) == 1.0
    with pytest.raises(InputError, match="modality must be one of"):
        intensity_transform("PET")
    with pytest.raises(InputError, match="ct_window"):
        intensity_transform("CT", ct_window=[500, -500])


def _preprocess_and_invert(settings: VolumeSettings, image: Path, label: Path):
    chain = Compose([LoadImaged(["image", "label"], ensure_channel_first=True), settings.transform(),
                     EnsureTyped(["image", "label"], dtype=torch.float32)])
    sample = chain({"image": str(image), "label": str(label)})
    pred = MetaTensor(sample["label"].as_tensor().clone(), meta=dict(sample["image"].meta))
    pred.applied_operations = list(sample["image"].applied_operations)
    inverted = Invertd("pred", chain, orig_keys="image", nearest_interp=True)({**sample, "pred": pred})["pred"]
    return sample, inverted


def test_a_non_ras_anisotropic_volume_is_cropped_and_resampled_and_inverted_onto_its_own_grid(tmp_path):
    image, label = write_case(tmp_path, "case.nii.gz", PERMUTED, shape=(18, 22, 26), pad=4)
    source = nib.load(label)
    truth = np.asarray(source.dataobj)
    # same spacing: reorientation + crop only, so the round trip is exact
    same = VolumeSettings([0.9, 1.2, 2.5], modality="MR")
    sample, inverted = _preprocess_and_invert(same, image, label)
    assert tuple(sample["image"].shape[1:]) == (26 - 8, 22 - 8, 18 - 8)  # R-A-S order, the zero margin cropped
    assert axis_spacing(sample["image"].affine.numpy()) == pytest.approx([0.9, 1.2, 2.5])
    assert inverted.shape[1:] == truth.shape and np.array_equal(inverted[0].numpy(), truth)
    assert np.allclose(inverted.affine.numpy(), source.affine)
    # another spacing: the grid and affine come back, the labels up to resampling
    coarse = VolumeSettings([1.5, 1.5, 1.5], modality="MR", crop_margin=1)
    sample, inverted = _preprocess_and_invert(coarse, image, label)
    assert axis_spacing(sample["image"].affine.numpy()) == pytest.approx([1.5, 1.5, 1.5])
    assert inverted.shape[1:] == truth.shape and np.allclose(inverted.affine.numpy(), source.affine)
    back = inverted[0].numpy() > 0.5
    assert 2 * (back & (truth > 0)).sum() / (back.sum() + (truth > 0).sum()) > 0.8
    # without foreground nothing is cropped
    empty = [tmp_path / "empty_image.nii.gz", tmp_path / "empty_label.nii.gz"]
    for path in empty:
        nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), np.eye(4)), path)
    sample, _ = _preprocess_and_invert(VolumeSettings([1.0, 1.0, 1.0], modality="MR"), *empty)
    assert tuple(sample["image"].shape[1:]) == (10, 10, 10)


def test_the_target_spacing_comes_from_the_setting_the_training_set_or_the_recorded_run(tmp_path):
    for i, affine in enumerate([lps((1.0, 1.0, 2.0)), PERMUTED, np.diag([0.8, 1.4, 3.0, 1.0])]):
        write_case(tmp_path / "data", f"c{i}.nii.gz", affine, shape=(8, 8, 8), pad=1)
    recorded = {"target_spacing": [2.0, 2.0, 2.0]}
    records = []
    run = SimpleNamespace(resume=False, settings={"val_fraction": 0.0}, record=lambda **e: records.append(e))
    settings = VolumeSettings(None, recorded=recorded, datalist=str(tmp_path / "data"), run=run)
    assert settings.target_spacing == pytest.approx([0.9, 1.2, 2.5])  # a new run: the median, not a stale record
    assert records[-1]["settings"]["target_spacing"] == settings.target_spacing
    run.resume = True
    assert VolumeSettings(None, recorded=recorded, run=run).target_spacing == [2.0, 2.0, 2.0]
    assert VolumeSettings(None, recorded=recorded, run={}).target_spacing == [2.0, 2.0, 2.0]  # inference
    assert VolumeSettings([1, 1, 3], recorded=recorded, run={}).target_spacing == [1.0, 1.0, 3.0]
    with pytest.raises(InputError, match="no training run in bundle_root records one"):
        VolumeSettings(None, run={})
    with pytest.raises(InputError, match="target_spacing must be three positive"):
        VolumeSettings([1.0, 0.0, 1.0])
    with pytest.raises(InputError, match="orientation must be three axis codes"):
        VolumeSettings([1.0, 1.0, 1.0], orientation="RRS")


def test_settings_recorded_before_the_run_starts_are_merged_not_replaced(tmp_path):
    owner = RunOwner(tmp_path / "run", settings={"patch_size": [16, 16, 16]})
    owner.record(settings={"network_def": {"variant": "B4"}}, overrides={"max_epochs": 1})  # the CLI's
    owner.record(settings={"target_spacing": [0.9, 1.2, 2.5]})  # VolumeSettings', resolved later
    owner.claim().start()
    owner.release("finished")
    settings = json.loads((tmp_path / "run" / "run.json").read_text())["settings"]
    assert settings["network_def"] == {"variant": "B4"} and settings["target_spacing"] == [0.9, 1.2, 2.5]
    assert settings["patch_size"] == [16, 16, 16]


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_a_cached_dataset_caches_the_preprocessing_but_feeds_the_current_feedback_mask(tmp_path, cache):
    image, label = write_case(tmp_path, "case.nii.gz", lps((1.0, 1.0, 2.0)), shape=(12, 12, 10), pad=2)
    feedback = FeedbackMaskCache()
    settings = VolumeSettings([1.0, 1.0, 2.0], modality="MR")
    transform = Compose([LoadImaged(["image", "label"], ensure_channel_first=True), settings.transform(),
                         EnsureTyped(["image", "label"], dtype=torch.float32),
                         FeedbackMaskd("image", feedback, source="previous")])
    assert cached_prefix(transform) == 6  # Load, Orientation, Spacing, intensity, crop, EnsureTyped: not the mask
    dataset = preprocessed_dataset([{"image": str(image), "label": str(label)}], transform, cache,
                                   cache_dir=tmp_path / "cache", cache_key=settings.cache_key(), progress=False)
    first = dataset[0]
    image.unlink()  # from now on the preprocessed volume can only come from the cache
    shape = tuple(first["image"].shape[1:])
    assert shape == (8, 8, 6) and float(first["mask"].sum()) > 0  # cropped; the Otsu start mask
    feedback.put("case.nii.gz", np.zeros((1, *shape), np.uint8))
    assert float(dataset[0]["mask"].sum()) == 0  # epoch 2 sees the mask stored in epoch 1
    feedback.put("case.nii.gz", np.ones((1, *shape), np.uint8))
    again = dataset[0]
    assert float(again["mask"].min()) == 1 and torch.equal(again["image"], first["image"])
    assert again["image"].meta["filename_or_obj"].endswith("case.nii.gz")
    if cache == "disk":
        assert len(list((tmp_path / "cache" / settings.cache_key()).glob("*.pt"))) == 1


@pytest.mark.slow
def test_volumes_train_with_a_memory_cache_record_the_median_spacing_and_infer_on_the_input_grid(tmp_path):
    """The bundle with ``volume.json``: the training set's median spacing computed and recorded in ``run.json``, the
    cached dataset feeding the feedback cache's *current* masks in epoch 2, and inference reading the spacing from
    the run and writing masks with each input's own shape and affine (inputs not RAS, not at the target spacing)."""
    data = tmp_path / "data"
    affines = [lps((1.0, 1.0, 2.0)), PERMUTED, np.diag([0.8, 1.4, 3.0, 1.0]), lps((1.1, 0.9, 2.5))]
    for i, affine in enumerate(affines):
        write_case(data, f"case{i}.nii.gz", affine, shape=(24, 24, 20), seed=i)
    tiny = {"bundle_root": str(tmp_path / "run"), "num_workers": 0, "num_passes": 1, "patch_size": [16, 16, 16],
            "network_def#channels": [4, 8, 8, 8], "modality": "MR", "cache": "memory"}
    workflow = load_workflow(bundle_configs("train", "volume"), "training", dataset_dir=str(data), max_epochs=2,
                             batch_size=2, val_fraction=0.25, val_interval=2, show_progress=False,
                             mask_source="previous", augmentation="none", unroll_passes=1, **tiny)
    parser = workflow.parser
    trainer, feedback = parser.get_parsed_content("train#trainer"), parser.get_parsed_content("feedback_cache")
    dataset = parser.get_parsed_content("train#dataset")
    assert type(dataset).__name__ == "CacheDataset"
    first_uncached = dataset.transform.transforms[cached_prefix(dataset.transform)]
    assert isinstance(first_uncached, FeedbackMaskd)  # the cached part is exactly the preprocessing
    fed = []

    def replace_masks(engine):  # after epoch 1: every cached feedback mask becomes all ones
        for key in list(feedback):
            feedback.put(key, np.ones_like(feedback.get(key)))

    def record_fed(engine):  # the mask wherever the patch shows the volume (a patch past its border is zero-padded)
        batch = engine.state.batch
        fed.append((engine.state.epoch, batch["mask"][batch["image"] != 0]))

    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), replace_masks)
    trainer.add_event_handler(Events.ITERATION_STARTED, record_fed)
    workflow.run()
    release_claims()
    assert {epoch for epoch, _ in fed} == {1, 2}
    assert all(float(mask.min()) == 1.0 for epoch, mask in fed if epoch == 2)  # the masks put after epoch 1
    assert any(float(mask.min()) == 0.0 for epoch, mask in fed if epoch == 1)  # the start masks
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["settings"]
    # the median of the RAS spacings of the training split (3 of the 4 cases)
    items = parser.get_parsed_content("train#dataset#data")
    expected = median_spacing([item["image"] for item in items])
    assert recorded["target_spacing"] == pytest.approx(expected) and recorded["modality"] == "MR"
    assert {k: recorded[k] for k in ("orientation", "crop_foreground")} == {"orientation": "RAS",
                                                                            "crop_foreground": True}
    assert not np.allclose(axis_spacing(affines[0]), recorded["target_spacing"])  # case 0: L-P-S, off the target

    out = tmp_path / "masks"
    inference = run_workflow(bundle_configs("inference", "volume"), "run", dataset_dir=str(data / "images"),
                             output_dir=str(out), **{k: v for k, v in tiny.items() if k != "cache"})
    assert inference.parser.get_parsed_content("volume_settings").target_spacing == recorded["target_spacing"]
    for path in sorted((data / "images").iterdir()):
        mask, source = nib.load(out / path.name), nib.load(path)
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


@pytest.mark.parametrize("volume_mode", ["3d", "slice"])
def test_the_volume_network_starts_at_the_foreground_prior(volume_mode):
    """volume.json starts the head at a 5 % foreground prior (README, volume study: without it the 3-D FANet at
    narrow widths stalls near even odds); a user's setting replaces it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(bundle_configs("train", "volume"))
    parser.update({"num_classes": 2, "volume_mode": volume_mode, "network_def#channels": [4, 8, 8, 8]})
    network = parser.get_parsed_content("network_def", instantiate=True)
    assert network.spatial_dims == (3 if volume_mode == "3d" else 2)
    assert torch.softmax(network.head.conv.bias, 0).tolist() == pytest.approx([0.95, 0.025, 0.025])
    parser.update({"network_def#prior_probability": 0.2})
    network = parser.get_parsed_content("network_def", lazy=False)
    assert torch.softmax(network.head.conv.bias, 0).tolist() == pytest.approx([0.8, 0.1, 0.1])


@pytest.mark.parametrize("reviewed_input", [False, True])
def test_volumes_train_for_annotation_with_corrected_masks_and_the_mask_as_input(tmp_path, reviewed_input):
    """The annotation-trained 3-D network (``mask_mix: "annotator"``, ``unroll_random``, ``mask_input``; also with a
    reviewed channel and corrections between the passes of every step, ``unroll_corrections``) trains through
    ``volume.json`` — the ``corrected`` masks read the label after the volume preprocessing, their boxes travel
    through the 3-D patch sampling and augmentation with the mask, the trainer hands the patches' labels to its
    inferer — and infers onto the input grid."""
    data = tmp_path / "data"
    for i in range(3):
        write_case(data, f"case{i}.nii.gz", lps((1.0, 1.0, 2.0)), shape=(24, 24, 20), seed=i)
    tiny = {"bundle_root": str(tmp_path / "run"), "num_workers": 0, "num_passes": 2, "patch_size": [16, 16, 16],
            "network_def#channels": [4, 8, 8, 8], "network_def#mask_input": True, "modality": "MR",
            "reviewed_input": reviewed_input}
    workflow = load_workflow(bundle_configs("train", "volume"), "training", dataset_dir=str(data), max_epochs=2,
                             batch_size=2, val_fraction=0, show_progress=False, mask_mix="annotator",
                             unroll_random=not reviewed_input, unroll_corrections=1.0 if reviewed_input else 0.0,
                             **tiny)
    transform = workflow.parser.get_parsed_content("train#feedback_mask")
    assert transform.mix["corrected"] == 0.4
    network = workflow.parser.get_parsed_content("network")
    first_conv = next(p for n, p in network.named_parameters() if n.startswith("encoder.0") and p.ndim == 5)
    assert network.mask_input and first_conv.shape[1] == 2 + reviewed_input  # image (+ reviewed) + the mask
    if reviewed_input:  # the trainer hands the reviewed voxels to its inferer
        assert workflow.parser.get_parsed_content("train#feedback_mask").reviewed_key == "reviewed"
        assert "reviewed" in workflow.parser.get_parsed_content("train#trainer").prepare_batch.extra_keys
        # every step corrects every sample between its two passes, with the patch's label
        assert workflow.parser.get_parsed_content("train#inferer").correction_prob == 1.0
        assert workflow.parser.get_parsed_content("train#trainer").prepare_batch.extra_keys["label"] == "label"
    workflow.run()
    release_claims()
    assert len(workflow.parser.get_parsed_content("feedback_cache")) == 3
    out = tmp_path / "masks"
    run_workflow(bundle_configs("inference", "volume"), "run", dataset_dir=str(data / "images"), output_dir=str(out),
                 ckpt_path=latest_intact_checkpoint(tmp_path / "run" / "models"), **tiny)
    for path in sorted((data / "images").iterdir()):
        mask, source = nib.load(out / path.name), nib.load(path)
        assert mask.shape == source.shape and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
