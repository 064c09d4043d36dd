"""Feedback loop in training: mask alignment under augmentation, keying by file name with shuffling and workers,
the initial Otsu masks, the commit policy handler."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor, decollate_batch
from monai.transforms import (
    Compose,
    EnsureTyped,
    LoadImaged,
    RandAffined,
    RandFlipd,
    RandRotate90d,
    RandRotated,
    RandSpatialCropd,
    Resized,
    ScaleIntensityRanged,
)

from fanet_monai.data import folder_datalist, make_synthetic_dataset
from fanet_monai.feedback import FeedbackMaskCache, otsu_mask_torch, sample_key
from fanet_monai.feedback.handler import FeedbackCommitHandler, FeedbackMaskHandler
from fanet_monai.data.transforms import AsRGBd, BinarizeLabeld
from fanet_monai.feedback.transforms import FeedbackMaskd

KEYS = ["image", "label", "mask"]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), num_images=8, height=40, width=56, seed=1)


def preprocessing(size=(48, 64)):
    return [
        LoadImaged(["image", "label"], image_only=True, ensure_channel_first=True),
        AsRGBd("image"),
        BinarizeLabeld("label"),
        ScaleIntensityRanged("image", 0, 255, 0, 1, clip=True),
        Resized(["image", "label"], spatial_size=size, mode=["bilinear", "nearest"]),
        EnsureTyped(["image", "label"], dtype=torch.float32),
    ]


def make_loader(dataset_dir, cache, augmentation, num_workers=2, seed=0, batch_size=3, size=(48, 64)):
    items = folder_datalist(dataset_dir, val_fraction=0.0)["training"]
    transform = Compose([*preprocessing(size), FeedbackMaskd("image", cache), *augmentation])
    transform.set_random_state(seed)
    loader = DataLoader(Dataset(items, transform), batch_size=batch_size, shuffle=True, num_workers=num_workers)
    return loader, items


def logits(label: torch.Tensor) -> torch.Tensor:
    """A "prediction" that is the (augmented) ground truth."""
    return 20.0 * (label.float() * 2 - 1)


def run_epoch(loader, handler, store_label=True):
    """One pass over the loader: returns {key: (fed mask, augmented label)} and stores the label as prediction."""
    seen = {}
    for batch in loader:
        for item in decollate_batch(batch):
            key = sample_key(item["mask"].meta)
            assert key not in seen, "a sample was delivered twice in one epoch"
            seen[key] = (item["mask"].clone(), item["label"].clone())
            if store_label:
                handler.cache.put(*handler.inverse.to_cache_frame(item["mask"], logits(item["label"])))
    return seen


def setup_handler(cache, loader):
    handler = FeedbackMaskHandler(cache, loader.dataset.transform)
    handler.initialize(SimpleNamespace(data_loader=loader))
    return handler


@pytest.mark.parametrize(
    "name, augmentation, batch_size",
    [
        ("flips", [RandFlipd(KEYS, prob=0.5, spatial_axis=0), RandFlipd(KEYS, prob=0.5, spatial_axis=1)], 3),
        # 90° rotations of non-square images change their shape: one sample per batch
        ("rot90", [RandRotate90d(KEYS, prob=0.75, max_k=3, spatial_axes=(0, 1))], 1),
    ],
)
def test_fed_mask_equals_augmented_label_exactly(dataset_dir, name, augmentation, batch_size):
    cache = FeedbackMaskCache()
    loader, items = make_loader(dataset_dir, cache, augmentation, batch_size=batch_size)
    handler = setup_handler(cache, loader)
    assert len(cache) == len(items)  # every sample starts from its Otsu mask
    run_epoch(loader, handler)
    for epoch in range(2):  # the random transforms differ between epochs: alignment must hold for each
        seen = run_epoch(loader, handler)
        assert sorted(seen) == sorted(sample_key(i["image"]) for i in items)
        for key, (fed, label) in seen.items():
            assert torch.equal(fed, label), f"{name}: epoch {epoch + 2}: fed mask of {key} not aligned"


@pytest.mark.parametrize(
    "augmentation",
    [
        [RandRotated(KEYS, range_x=0.6, prob=1.0, mode=["bilinear", "nearest", "nearest"])],
        [RandAffined(KEYS, prob=1.0, scale_range=(0.15, 0.15), mode=["bilinear", "nearest", "nearest"])],
    ],
    ids=["rotation", "zoom"],
)
def test_free_rotation_and_zoom_keep_masks_aligned(tmp_path, augmentation):
    # objects of realistic size (radius 5-16 px at 128²): nearest-neighbour resampling there and back costs only
    # boundary pixels
    dataset_dir = make_synthetic_dataset(tmp_path, num_images=6, height=128, width=128, seed=2)
    cache = FeedbackMaskCache()
    # start from the ground truth so that pixels rotated out of view keep a correct previous value
    loader, items = make_loader(dataset_dir, cache, augmentation, size=(128, 128))
    handler = setup_handler(cache, loader)
    label_frame = Compose(preprocessing((128, 128)))
    for item in items:
        cache.put(sample_key(item["image"]), label_frame(dict(item))["label"].numpy())
    run_epoch(loader, handler)
    seen = run_epoch(loader, handler, store_label=False)
    ious = {}
    for key, (fed, label) in seen.items():
        fed, label = fed > 0.5, label > 0.5
        ious[key] = float((fed & label).sum() / (fed | label).sum())
    # resampling a binary mask there and back (nearest forward, bilinear inverse) moves only boundary pixels
    assert np.mean(list(ious.values())) >= 0.98, ious
    assert min(ious.values()) >= 0.95, ious


def test_crops_store_covered_pixels_and_keep_the_rest(dataset_dir):
    augmentation = [RandSpatialCropd(KEYS, roi_size=(32, 40), random_size=False)]
    cache = FeedbackMaskCache()
    loader, items = make_loader(dataset_dir, cache, augmentation)
    handler = setup_handler(cache, loader)
    label_frame = Compose(preprocessing())
    labels = {sample_key(i["image"]): label_frame(dict(i))["label"].numpy().astype(np.uint8) for i in items}
    for key in labels:
        cache.put(key, np.zeros_like(labels[key]))  # previous masks: empty
    seen = run_epoch(loader, handler)
    for key, (fed, label) in seen.items():
        stored = cache.get(key)
        assert stored.shape == labels[key].shape == (1, 48, 64)
        assert (stored <= labels[key]).all()  # outside the crop: still the previous (empty) mask
        assert stored.sum() == label.sum()  # inside the crop: exactly the label's pixels
    # with the label everywhere, any later crop is fed exactly the augmented label
    for key in labels:
        cache.put(key, labels[key])
    run_epoch(loader, handler)
    for key, (fed, label) in run_epoch(loader, handler, store_label=False).items():
        assert torch.equal(fed, label), key


def test_initial_masks_are_otsu_of_the_preprocessed_image(dataset_dir):
    cache = FeedbackMaskCache()
    loader, items = make_loader(dataset_dir, cache, [], num_workers=0)
    setup_handler(cache, loader)
    pre = Compose(preprocessing())
    for item in items:
        image = pre(dict(item))["image"]
        expected = otsu_mask_torch(image[None].as_tensor())[0].numpy()
        np.testing.assert_array_equal(cache.get(sample_key(item["image"])), expected)


def test_handler_rejects_random_transforms_before_the_mask_and_persistent_workers(dataset_dir):
    cache = FeedbackMaskCache()
    items = folder_datalist(dataset_dir, val_fraction=0.0)["training"]
    bad = Compose([*preprocessing(), RandFlipd(["image", "label"], prob=0.5), FeedbackMaskd("image", cache)])
    loader = DataLoader(Dataset(items, bad), batch_size=2)
    with pytest.raises(ValueError, match="random transforms before FeedbackMaskd"):
        setup_handler(cache, loader)
    good = Compose([*preprocessing(), FeedbackMaskd("image", cache)])
    persistent = DataLoader(Dataset(items, good), batch_size=2, num_workers=1, persistent_workers=True)
    with pytest.raises(ValueError, match="persistent"):
        setup_handler(cache, persistent)
    with pytest.raises(ValueError, match="exactly one FeedbackMaskd"):
        setup_handler(FeedbackMaskCache(), DataLoader(Dataset(items, good), batch_size=2))


def test_feed_leaves_the_batch_alone_and_measures_fed_mask_dice():
    cache = FeedbackMaskCache()
    handler = FeedbackMaskHandler(cache, Compose([FeedbackMaskd("image", cache)]))
    label = torch.zeros(2, 1, 8, 8)
    label[:, :, :4] = 1
    mask = label.clone()
    mask[1] = 0  # second sample fed an empty mask: Dice 0
    engine = SimpleNamespace(state=SimpleNamespace(batch={"image": torch.rand(2, 3, 8, 8), "label": label,
                                                          "mask": mask}, metrics={}, epoch=1))
    handler._reset_epoch(engine)
    image = engine.state.batch["image"]
    handler.feed(engine)
    assert engine.state.batch["image"] is image  # the inferer builds the network input, not the handler
    handler.report(engine)
    assert engine.state.metrics["feedback_mask_dice"] == pytest.approx(0.5)
    assert handler.history == [pytest.approx(0.5)]


def test_commit_handler_follows_validation_loss():
    cache = FeedbackMaskCache(update_policy="on_improvement")
    commit = FeedbackCommitHandler(cache, "val_loss", "min")
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}))
    mask = np.ones((1, 4, 4), dtype=np.uint8)
    for loss, expect_committed in [(0.5, True), (0.6, False), (0.4, True)]:
        cache.put("a.png", mask * expect_committed)
        engine.state.metrics["val_loss"] = loss
        commit(engine)
        assert cache.pending == 0
        if expect_committed:
            np.testing.assert_array_equal(cache.get("a.png"), mask)
    assert commit.best == 0.4
    restored = FeedbackCommitHandler(cache)
    restored.load_state_dict(commit.state_dict())
    assert restored.best == 0.4


def _stored_batch(num_items=2, size=8):
    """Per-sample items as a trainer sees them (decollated): a fed mask with its file name, a label; predictions
    with two passes stacked (pass 1 wrong everywhere, pass 2 = the label), as ``loss_on_every_pass`` returns."""
    cache = FeedbackMaskCache()
    handler = FeedbackMaskHandler(cache, Compose([FeedbackMaskd("image", cache)]))
    items, outputs = [], []
    for i in range(num_items):
        label = torch.zeros(1, size, size)
        label[:, : 2 + i, :] = 1
        mask = MetaTensor(torch.zeros(1, size, size), meta={"filename_or_obj": f"/data/images/{i}.png"})
        items.append({"mask": mask, "label": label})
        outputs.append({"pred": torch.cat([-logits(label), logits(label)])})
    return handler, items, outputs


def test_store_caches_the_last_pass_and_reports_its_dice_exactly():
    handler, items, outputs = _stored_batch()
    # pass 2 of the second sample misses one of its 3 foreground rows: Dice 2 * 16 / (16 + 24) = 0.8
    outputs[1]["pred"][1, 2] = -20.0
    engine = SimpleNamespace(state=SimpleNamespace(batch=items, output=outputs, metrics={}, epoch=1))
    handler._reset_epoch(engine)
    handler.store(engine)
    handler.report(engine)
    np.testing.assert_array_equal(handler.cache.get("0.png"), items[0]["label"].numpy().astype(np.uint8))
    expected = items[1]["label"].clone()
    expected[:, 2] = 0
    np.testing.assert_array_equal(handler.cache.get("1.png"), expected.numpy().astype(np.uint8))
    assert engine.state.metrics["stored_mask_dice"] == pytest.approx((1.0 + 0.8) / 2)
    assert handler.stored_history == [pytest.approx(0.9)]


def test_store_with_a_collated_batch_decollate_false():
    handler, items, outputs = _stored_batch(num_items=3)
    batch = {"mask": torch.stack([i["mask"] for i in items]), "label": torch.stack([i["label"] for i in items])}
    batch["mask"].meta["filename_or_obj"] = [i["mask"].meta["filename_or_obj"] for i in items]
    batch["mask"].is_batch = True
    output = {"pred": torch.stack([o["pred"] for o in outputs])}
    engine = SimpleNamespace(state=SimpleNamespace(batch=batch, output=output, metrics={}, epoch=1))
    handler._reset_epoch(engine)
    handler.store(engine)
    handler.report(engine)
    assert sorted(handler.cache.keys()) == ["0.png", "1.png", "2.png"]
    for item in items:
        key = sample_key(item["mask"].meta)
        np.testing.assert_array_equal(handler.cache.get(key), item["label"].numpy().astype(np.uint8))
    assert engine.state.metrics["stored_mask_dice"] == pytest.approx(1.0)


def test_feedback_mask_transform_accepts_plain_tensors_with_a_meta_dict():
    cache = FeedbackMaskCache()
    cached = np.zeros((1, 6, 6), dtype=np.uint8)
    cached[0, :3] = 1
    cache.put("a.png", cached)
    image = torch.rand(3, 6, 6)
    data = {"image": image, "image_meta_dict": {"filename_or_obj": "/x/a.png"}}
    out = FeedbackMaskd("image", cache)(data)
    assert isinstance(out["mask"], MetaTensor) and out["mask"].meta["filename_or_obj"] == "a.png"
    np.testing.assert_array_equal(out["mask"].numpy(), cached.astype(np.float32))
    fresh = FeedbackMaskd("image", FeedbackMaskCache())({"image": image, "image_meta_dict": {"filename_or_obj": "b"}})
    torch.testing.assert_close(fresh["mask"].as_tensor(), otsu_mask_torch(image[None])[0])
