"""Datalists from folders and JSON, synthetic data, input transforms, the feedback-mask lookup transform."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from fanet_monai.checkpoints import latest_checkpoint
from fanet_monai.data import folder_datalist, load_datalist, make_synthetic_dataset, split_items
from fanet_monai.feedback import FeedbackMaskCache, otsu_mask_torch
from fanet_monai.data.transforms import AsRGBd, BinarizeLabeld
from fanet_monai.feedback.transforms import FeedbackMaskd


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path):
    for i in range(5):
        write_png(tmp_path / "images" / f"s{i}.png", np.full((8, 10, 3), 40 * i, np.uint8))
        write_png(tmp_path / "masks" / f"s{i}.png", np.zeros((8, 10), np.uint8))
    return tmp_path


def test_folder_datalist_pairs_by_stem_and_splits_with_a_seed(folder):
    lists = folder_datalist(folder, val_fraction=0.4, seed=1)
    assert len(lists["training"]) == 3 and len(lists["validation"]) == 2
    for item in lists["training"] + lists["validation"]:
        assert item["image"].replace("images", "masks") == item["label"]
    assert folder_datalist(folder, val_fraction=0.4, seed=1) == lists
    assert folder_datalist(folder, val_fraction=0.4, seed=2) != lists
    assert load_datalist(folder, "validation", 0.4, 1) == lists["validation"]


def test_folder_datalist_errors_name_the_file(folder):
    (folder / "masks" / "s3.png").unlink()
    with pytest.raises(ValueError, match=r"s3\.png: image has no mask"):
        folder_datalist(folder)
    write_png(folder / "masks" / "s3.png", np.zeros((8, 10), np.uint8))
    write_png(folder / "masks" / "extra.png", np.zeros((8, 10), np.uint8))
    with pytest.raises(ValueError, match=r"extra\.png: mask has no image"):
        folder_datalist(folder)
    (folder / "masks" / "extra.png").unlink()
    write_png(folder / "images" / "s1.jpg", np.zeros((8, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="duplicate stem 's1'"):
        folder_datalist(folder)
    with pytest.raises(ValueError, match="folder not found"):
        folder_datalist(folder / "nowhere")


def test_empty_folder_and_json_datalist(tmp_path, folder):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        folder_datalist(tmp_path / "empty")
    datalist = {"training": [{"image": "images/s0.png", "label": "masks/s0.png"}], "validation": []}
    path = folder / "datalist.json"
    path.write_text(json.dumps(datalist))
    items = load_datalist(path, "training")
    assert items == [{"image": str(folder / "images/s0.png"), "label": str(folder / "masks/s0.png")}]
    with pytest.raises(ValueError, match="neither a dataset folder nor a datalist"):
        load_datalist(folder / "missing.json")


def test_split_items_keeps_one_of_each():
    split = split_items([{"i": i} for i in range(3)], 0.1, 0)
    assert len(split["validation"]) == 1 and len(split["training"]) == 2
    assert split_items([{"i": 0}], 0.0, 0) == {"training": [{"i": 0}], "validation": []}


def test_synthetic_dataset_is_paired_and_binary(tmp_path):
    root = make_synthetic_dataset(tmp_path, num_images=3, height=32, width=40, seed=0)
    image = np.asarray(Image.open(root / "images" / "case_001.png"))
    mask = np.asarray(Image.open(root / "masks" / "case_001.png"))
    assert image.shape == (32, 40, 3) and image.dtype == np.uint8 and mask.shape == (32, 40)
    assert set(np.unique(mask)) <= {0, 255} and mask.any()
    assert len(folder_datalist(root, 0.0)["training"]) == 3


@pytest.mark.parametrize("channels, expected", [(1, 3), (2, 3), (3, 3), (4, 3)])
def test_as_rgb(channels, expected):
    image = torch.arange(channels * 4, dtype=torch.float32).reshape(channels, 2, 2)
    out = AsRGBd("image")({"image": image})["image"]
    assert out.shape == (expected, 2, 2)
    if channels in (1, 2):
        assert torch.equal(out[0], out[2]) and torch.equal(out[0], image[0])
    else:
        assert torch.equal(out, image[:3])
    with pytest.raises(ValueError, match="expected 1-4 channels"):
        AsRGBd("image")({"image": torch.zeros(5, 2, 2)})


def test_binarize_label_handles_0_1_and_0_255():
    for high in (1.0, 255.0):
        label = torch.tensor([[[0.0, high], [high, 0.0]]])
        out = BinarizeLabeld("label")({"label": label})["label"]
        assert out.dtype == torch.float32 and torch.equal(out, (label > 0).float())
    rgb = torch.zeros(3, 2, 2)
    rgb[:, 0, 0] = 200
    assert BinarizeLabeld("label", threshold=127)({"label": rgb})["label"].shape == (1, 2, 2)


def test_feedback_mask_transform_uses_cache_then_otsu():
    image = MetaTensor(torch.rand(3, 16, 20), meta={"filename_or_obj": "/data/images/a.png"})
    cache = FeedbackMaskCache()
    transform = FeedbackMaskd("image", cache)
    out = transform({"image": image})["mask"]
    assert out.shape == (1, 16, 20) and out.meta["filename_or_obj"] == "/data/images/a.png"
    assert torch.equal(out.as_tensor(), otsu_mask_torch(image[None].as_tensor())[0])
    stored = np.zeros((1, 16, 20), np.uint8)
    stored[0, :4] = 1
    cache.put("a.png", stored)
    assert torch.equal(transform({"image": image})["mask"].as_tensor(), torch.as_tensor(stored, dtype=torch.float32))
    cache.put("a.png", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="a.png: cached feedback mask has shape"):
        transform({"image": image})


def test_latest_checkpoint_picks_the_highest_epoch(tmp_path):
    for epoch in (2, 10, 9):
        (tmp_path / f"checkpoint_epoch={epoch}.pt").write_bytes(b"")
    (tmp_path / "model.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")
    with pytest.raises(FileNotFoundError, match="no 'checkpoint_epoch=N.pt'"):
        latest_checkpoint(tmp_path / "none")


def test_contiguous_hold_out_takes_the_last_stems(folder):
    lists = folder_datalist(folder, val_fraction=0.4, split_mode="last")
    assert [i["image"].split("/")[-1] for i in lists["validation"]] == ["s3.png", "s4.png"]
    assert [i["image"].split("/")[-1] for i in lists["training"]] == ["s0.png", "s1.png", "s2.png"]
    with pytest.raises(ValueError, match="split mode"):
        split_items([{}], 0.5, 0, mode="middle")
