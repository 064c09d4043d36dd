"""``prepare``: tiny synthetic replicas of each paper dataset's native layout (real file naming, generated pixels)
round-trip to a datalist with the right counts, pairing and split sizes; the shared ISBI 2012 EM slices prepare."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fanet_monai.data import load_datalist
from fanet_monai.data.layouts import LAYOUTS, prepare
from fanet_monai.data.splits import PAPER_SPLITS, split_counts

SHARED = Path(__file__).resolve().parents[2] / "shared"
EM_SLICES = SHARED / "data" / "isbi2012_em"


def blob(h, w, seed, value=255):
    """A binary ellipse at a seeded position, uint8 0/``value``."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    return ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) * value).astype(np.uint8)


def picture(mask, channels=3, seed=0):
    rng = np.random.RandomState(seed)
    base = (mask > 0) * 150 + 40 + rng.randint(0, 30, mask.shape)
    base = base.astype(np.uint8)
    return base if channels == 1 else np.stack([base] * channels, axis=-1)


def save(path: Path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def names(items):
    return [os.path.basename(i["image"]) for i in items]


def tree(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_paper_split_sizes_of_table_one():
    assert split_counts(1000, PAPER_SPLITS["kvasir-seg"])[:3] == (880, 120, 120)  # validation = test
    assert split_counts(612, PAPER_SPLITS["cvc-clinicdb"])[:3] == (490, 61, 61)
    assert split_counts(670, PAPER_SPLITS["dsb2018"])[:3] == (335, 201, 134)
    assert split_counts(2594, PAPER_SPLITS["isic2018"])[:3] == (1815, 520, 259)
    assert split_counts(30, PAPER_SPLITS["em-isbi2012"])[:3] == (24, 3, 3)
    assert split_counts(28, PAPER_SPLITS["chase-db1"])[:3] == (20, 8, 8)
    assert split_counts(10, PAPER_SPLITS["cvc-clinicdb"]) == (8, 1, 1, False)  # other sizes: proportional


def test_kvasir_seg_with_and_without_train_val_lists(tmp_path, capsys):
    root = tmp_path / "Kvasir-SEG"
    ids = [f"cju{i:03d}xyz" for i in range(10)]
    for i, name in enumerate(ids):
        mask = blob(32, 40, i)
        save(root / "images" / f"{name}.jpg", picture(mask, seed=i), quality=95)
        save(root / "masks" / f"{name}.jpg", np.stack([mask] * 3, -1), quality=90)  # JPEG masks: noisy
    with pytest.warns(UserWarning, match=r"changed \d+ pixels"):
        report = prepare("kvasir-seg", tmp_path, tmp_path / "out" / "kvasir.json")
    assert "counts: training 9, validation 1, test 1" in capsys.readouterr().out
    assert report.counts == {"training": 9, "validation": 1, "test": 1}
    data = json.loads((tmp_path / "out" / "kvasir.json").read_text())
    assert data["validation"] == data["test"]
    for item in data["training"] + data["test"]:
        assert Path(item["image"]).stem == Path(item["label"]).stem
        assert "/images/" in item["image"] and "/masks/" in item["label"]

    (root / "train.txt").write_text("\n".join(ids[:7]) + "\n")
    (root / "val.txt").write_text("\n".join(f"{n}.jpg" for n in ids[7:]) + "\n")
    with pytest.warns(UserWarning):
        prepare("kvasir-seg", root, tmp_path / "lists.json", quiet=True)
    training = load_datalist(tmp_path / "lists.json", "training")
    assert names(training) == [f"{n}.jpg" for n in ids[:7]]
    assert names(load_datalist(tmp_path / "lists.json", "test")) == [f"{n}.jpg" for n in ids[7:]]
    assert load_datalist(tmp_path / "lists.json", "validation") == load_datalist(tmp_path / "lists.json", "test")


def test_cvc_clinicdb_tif_pairs_and_split(tmp_path):
    root = tmp_path / "CVC-ClinicDB"
    for i in range(1, 13):
        mask = blob(24, 32, i)
        save(root / "Original" / f"{i}.tif", picture(mask, seed=i))
        save(root / "Ground Truth" / f"{i}.tif", mask)
    report = prepare("cvc-clinicdb", tmp_path, tmp_path / "cvc.json", seed=3, quiet=True)
    assert report.counts == {"training": 10, "validation": 1, "test": 1}
    lists = {k: load_datalist(tmp_path / "cvc.json", k) for k in ("training", "validation", "test")}
    every = [i for items in lists.values() for i in items]
    assert sorted(int(Path(i["image"]).stem) for i in every) == list(range(1, 13))
    assert all(Path(i["label"]).parent.name == "Ground Truth" and Path(i["label"]).name == Path(i["image"]).name
               for i in every)
    again = prepare("cvc-clinicdb", tmp_path, tmp_path / "again.json", seed=3, quiet=True)
    assert json.loads((tmp_path / "again.json").read_text())["test"] == json.loads((tmp_path / "cvc.json").read_text())["test"]
    assert again.counts == report.counts


def test_dsb2018_masks_are_merged_by_union_outside_the_source_tree(tmp_path):
    train = tmp_path / "dsb" / "stage1_train"
    expected = {}
    for c in range(6):
        case = f"{c:02d}a7f3e9b1c4d5"
        image = np.zeros((32, 32, 4), np.uint8)
        image[..., 3] = 255  # RGBA, as the DSB PNGs
        union = np.zeros((32, 32), bool)
        for k in range(3):
            nucleus = blob(32, 32, 10 * c + k)
            save(train / case / "masks" / f"m{c}{k}e4d1.png", nucleus)
            union |= nucleus > 0
        image[..., :3] = picture(union.astype(np.uint8) * 255, seed=c)
        save(train / case / "images" / f"{case}.png", image)
        expected[case] = union
    before = tree(tmp_path / "dsb")
    report = prepare("dsb2018", tmp_path / "dsb", tmp_path / "out" / "dsb.json", quiet=True)
    assert tree(tmp_path / "dsb") == before  # nothing written into the dataset
    assert report.counts == {"training": 3, "validation": 2, "test": 1}
    items = [i for k in ("training", "validation", "test") for i in load_datalist(tmp_path / "out" / "dsb.json", k)]
    assert len(items) == 6
    for item in items:
        case = Path(item["image"]).stem
        assert Path(item["label"]) == tmp_path / "out" / "dsb2018_masks" / f"{case}.png"
        merged = np.asarray(Image.open(item["label"]))
        assert set(np.unique(merged)) <= {0, 255} and np.array_equal(merged > 0, expected[case])
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]


def test_isic2018_task1_naming(tmp_path):
    inputs = tmp_path / "ISIC2018_Task1-2_Training_Input"
    truth = tmp_path / "ISIC2018_Task1_Training_GroundTruth"
    inputs.mkdir()
    (inputs / "ATTRIBUTION.txt").write_text("ISIC")
    for i in range(10):
        mask = blob(30, 40, i)
        save(inputs / f"ISIC_{i:07d}.jpg", picture(mask, seed=i))
        save(truth / f"ISIC_{i:07d}_segmentation.png", mask)
    report = prepare("isic2018", tmp_path, tmp_path / "isic.json", quiet=True)
    assert report.counts == {"training": 7, "validation": 2, "test": 1}
    for item in load_datalist(tmp_path / "isic.json", "training"):
        assert Path(item["label"]).name == Path(item["image"]).stem + "_segmentation.png"


def test_em_isbi2012_multipage_tifs_become_slices(tmp_path):
    masks = [blob(32, 32, i) for i in range(5)]
    images = [Image.fromarray(picture(m, channels=1, seed=i)) for i, m in enumerate(masks)]
    labels = [Image.fromarray(m) for m in masks]
    images[0].save(tmp_path / "train-volume.tif", save_all=True, append_images=images[1:])
    labels[0].save(tmp_path / "train-labels.tif", save_all=True, append_images=labels[1:])
    report = prepare("em-isbi2012", tmp_path, tmp_path / "out" / "em.json", quiet=True)
    assert report.counts == {"training": 3, "validation": 1, "test": 1}
    assert names(load_datalist(tmp_path / "out" / "em.json", "training")) == ["00.png", "01.png", "02.png"]
    assert names(load_datalist(tmp_path / "out" / "em.json", "test")) == ["04.png"]  # contiguous: last slices
    slices = tmp_path / "out" / "em-isbi2012_slices"
    assert np.array_equal(np.asarray(Image.open(slices / "masks" / "03.png")), masks[3])
    assert np.array_equal(np.asarray(Image.open(slices / "images" / "02.png")), np.asarray(images[2]))


@pytest.mark.skipif(not EM_SLICES.is_dir(), reason="../shared/data/isbi2012_em is not available")
def test_shared_isbi2012_png_slices_prepare_with_the_paper_split(tmp_path):
    report = prepare("em-isbi2012", EM_SLICES, tmp_path / "em.json", quiet=True)
    assert report.counts == {"training": 24, "validation": 3, "test": 3}
    assert names(load_datalist(tmp_path / "em.json", "validation")) == ["24.png", "25.png", "26.png"]
    assert names(load_datalist(tmp_path / "em.json", "test")) == ["27.png", "28.png", "29.png"]
    assert report.splits["training"][0].size == (512, 512)
    assert 0.7 < np.mean([i.foreground for i in report.splits["training"]]) < 0.85  # 255 = cell interior
    assert list(tmp_path.iterdir()) == [tmp_path / "em.json"]  # nothing generated for PNG slices


def test_drive_keeps_the_fov_masks(tmp_path):
    root = tmp_path / "DRIVE"
    for part, numbers in (("training", range(21, 24)), ("test", range(1, 3))):
        for n in numbers:
            vessels = blob(36, 34, n)
            fov = blob(36, 34, n + 100)
            fov[10:26, 10:24] = 255
            save(root / part / "images" / f"{n:02d}_{part}.tif", picture(vessels, seed=n))
            save(root / part / "1st_manual" / f"{n:02d}_manual1.gif", vessels)
            save(root / part / "mask" / f"{n:02d}_{part}_mask.gif", fov)
    report = prepare("drive", tmp_path, tmp_path / "drive.json", quiet=True)
    assert report.counts == {"training": 3, "validation": 2, "test": 2}
    training = load_datalist(tmp_path / "drive.json", "training")
    assert [Path(i["image"]).name for i in training] == ["21_training.tif", "22_training.tif", "23_training.tif"]
    for item in training:
        number = Path(item["image"]).name[:2]
        assert Path(item["label"]).name == f"{number}_manual1.gif"
        assert Path(item["fov"]).name == f"{number}_training_mask.gif"
    data = json.loads((tmp_path / "drive.json").read_text())
    assert data["validation"] == data["test"] and all("fov" in i for i in data["test"])


def test_chase_db1_first_observer_and_contiguous_split(tmp_path):
    root = tmp_path / "CHASEDB1"
    stems = [f"Image_{n:02d}{eye}" for n in range(1, 5) for eye in "LR"]
    for i, stem in enumerate(stems):
        mask = blob(30, 32, i)
        save(root / f"{stem}.jpg", picture(mask, seed=i), quality=95)
        save(root / f"{stem}_1stHO.png", mask)
        save(root / f"{stem}_2ndHO.png", blob(30, 32, i + 50))
    report = prepare("chase-db1", tmp_path, tmp_path / "chase.json", quiet=True)
    assert report.counts == {"training": 6, "validation": 2, "test": 2}
    training = load_datalist(tmp_path / "chase.json", "training")
    assert names(training) == [f"{s}.jpg" for s in stems[:6]]
    assert all(i["label"].endswith(Path(i["image"]).stem + "_1stHO.png") for i in training)
    assert names(load_datalist(tmp_path / "chase.json", "test")) == ["Image_04L.jpg", "Image_04R.jpg"]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    for i in range(10):
        mask = blob(32, 32, i)
        save(root / "images" / f"case_{i}.png", picture(mask, seed=i))
        save(root / "masks" / f"case_{i}.png", (mask > 0).astype(np.uint8))  # 0/1 masks
    return root


def test_folder_layout_and_options(folder, tmp_path):
    report = prepare("folder", folder, tmp_path / "f.json", quiet=True)
    assert report.counts == {"training": 8, "validation": 1, "test": 1}
    held = prepare("folder", folder, tmp_path / "g.json", val_fraction=0.2, test_fraction=0.0, split_order="contiguous",
                   quiet=True)
    assert held.counts == {"training": 8, "validation": 2, "test": 0}
    assert names(load_datalist(tmp_path / "g.json", "validation")) == ["case_8.png", "case_9.png"]
    with pytest.raises(ValueError, match="unknown layout"):
        prepare("kvasir", folder, tmp_path / "x.json")
    assert set(LAYOUTS) == {"kvasir-seg", "cvc-clinicdb", "dsb2018", "isic2018", "em-isbi2012", "drive", "chase-db1",
                            "folder"}


def test_offline_expansion_writes_fixed_copies(folder, tmp_path):
    report = prepare("folder", folder, tmp_path / "out" / "aug.json", offline_copies=2, seed=1, quiet=True)
    training = load_datalist(tmp_path / "out" / "aug.json", "training")
    assert len(training) == 8 * 3 and report.counts["training"] == 8
    copies = [i for i in training if "_aug" in i["image"]]
    assert len(copies) == 16 and all(Path(i["image"]).is_file() and Path(i["label"]).is_file() for i in copies)
    assert all(str(tmp_path / "out" / "folder_augmented") in i["image"] for i in copies)
    mask = np.asarray(Image.open(copies[0]["label"]))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
    first = [np.asarray(Image.open(copies[k]["image"])) for k in range(4)]
    assert not all(np.array_equal(first[0], other) for other in first[1:])  # the copies differ ...
    prepare("folder", folder, tmp_path / "out" / "again.json", offline_copies=2, seed=1, quiet=True)
    again = [np.asarray(Image.open(copies[k]["image"])) for k in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # ... and are fixed by the seed


def test_prepare_from_the_command_line(folder, tmp_path, capsys):
    import fire

    from fanet_monai.cli import FanetCLI

    out = tmp_path / "cli" / "data.json"
    fire.Fire(FanetCLI, command=["prepare", "folder", str(folder), str(out), "--seed", "2", "--val_fraction", "0.2"])
    printed = capsys.readouterr().out
    assert "counts: training 7, validation 2, test 1" in printed and f"datalist written to {out}" in printed
    assert len(load_datalist(out, "training")) == 7
