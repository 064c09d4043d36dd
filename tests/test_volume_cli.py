"""``fanet train/evaluate/infer`` on a folder of volumes (issue 20): detected, said, run with the volume layer,
recorded in the run so evaluation and inference stay 3-D."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fanet_monai.cli import run
from fanet_monai.cli.configs import data_layers, holds_volumes
from fanet_monai.data import make_synthetic_dataset, make_volume_dataset
from fanet_monai.run import release_claims

TINY = ["--num_workers", "0", "--num_passes", "2", "--patch_size", "[16,16,16]", "--network_def#channels",
        "[4,8,8,8]"]


def test_volume_data_is_told_from_bitmaps(tmp_path):
    volumes = make_volume_dataset(tmp_path / "volumes", num_volumes=2, shape=(12, 12, 12), seed=0)
    bitmaps = make_synthetic_dataset(tmp_path / "bitmaps", num_images=2, height=16, width=16, seed=0)
    assert holds_volumes(volumes) and holds_volumes(volumes / "images")
    assert holds_volumes(volumes / "images" / "tubes_000.nii.gz")
    assert not holds_volumes(bitmaps) and not holds_volumes(bitmaps / "images")
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": [{"image": str(volumes / "images" / "tubes_000.nii.gz"),
                                                  "label": str(volumes / "masks" / "tubes_000.nii.gz")}]}))
    assert holds_volumes(datalist)
    assert data_layers(volumes) == ("volume",) and data_layers(bitmaps) == ()
    # a run's record wins over what the data looks like
    assert data_layers(bitmaps, {"config_layers": ["volume"]}) == ("volume",)
    assert data_layers(volumes, {"config_layers": []}) == ()


@pytest.mark.slow
def test_the_cli_detects_a_volume_folder_and_its_run_stays_3d(tmp_path, capsys):
    data = make_volume_dataset(tmp_path / "data", num_volumes=5, shape=(20, 20, 24), kind="tubes",
                               spacing=(1.0, 1.0, 1.5), seed=3)
    root = tmp_path / "run"
    assert run(["train", str(data), "--bundle_root", str(root), "--max_epochs", "1", "--batch_size", "2",
                "--show_progress", "False", *TINY]) == 0
    release_claims()
    assert "holds 3-D volumes: the 3-D FANet in patch mode" in capsys.readouterr().out
    settings = json.loads((root / "run.json").read_text())["settings"]
    assert settings["config_layers"] == ["volume"] and settings["spatial_dims"] == 3
    assert run(["evaluate", str(data), "--bundle_root", str(root), "--num_workers", "0", "--num_passes", "2",
                "--num_qualitative", "0"]) == 0
    assert "was trained on volumes" in capsys.readouterr().out
    masks = tmp_path / "masks"
    assert run(["infer", str(data / "images"), str(masks), "--bundle_root", str(root), "--num_workers", "0"]) == 0
    written = sorted(masks.rglob("*.nii.gz"))
    assert len(written) == 5
    for path in written:
        mask, source = nib.load(path), nib.load(data / "images" / path.name)
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}  # class codes, not a bitmap's 0/255


HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "msd_hippocampus"


@pytest.mark.slow
@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason="needs ../shared/data/msd_hippocampus")
def test_decathlon_hippocampus_prepare_train_evaluate_infer(tmp_path, capsys):
    """Real MRI volumes (Decathlon Task04, two classes) from ``prepare msd`` to masks: the datalist's classes,
    channel and modality (MR: z-score) are taken without options, the volumes go through the 3-D bundle."""
    full = tmp_path / "hippocampus.json"
    assert run(["prepare", "msd", str(HIPPOCAMPUS), str(full)]) == 0
    content = json.loads(full.read_text())
    assert len(content["training"]) + len(content["validation"]) == 40
    small = tmp_path / "small.json"  # 8 + 2 cases keep the test short; the declarations travel with the list
    small.write_text(json.dumps({**content, "training": content["training"][:8],
                                 "validation": content["validation"][:2]}))
    root = tmp_path / "run"
    assert run(["train", str(small), "--bundle_root", str(root), "--max_epochs", "1", "--batch_size", "4",
                "--show_progress", "False", *TINY]) == 0
    release_claims()
    out = capsys.readouterr().out
    assert "declares" in out and "holds 3-D volumes" in out
    settings = json.loads((root / "run.json").read_text())["settings"]
    assert settings["num_classes"] == 2 and settings["modality"] == "MR" and settings["image_channels"] == 1
    assert settings["label_names"] == {"1": "Anterior", "2": "Posterior"}
    assert len(settings["target_spacing"]) == 3
    assert run(["evaluate", str(small), "--bundle_root", str(root), "--num_qualitative", "1", *TINY]) == 0
    with open(root / "eval" / "metrics_per_pass.csv") as f:
        row = next(csv.DictReader(f))
    assert {"dice_class_1", "dice_class_2", "hd95_class_1", "hd95_class_2"} <= set(row)
    images = tmp_path / "images"
    images.mkdir()
    for item in content["validation"][:2]:
        (images / Path(item["image"]).name).symlink_to(item["image"])
    masks = tmp_path / "masks"
    assert run(["infer", str(images), str(masks), "--bundle_root", str(root), "--num_workers", "0"]) == 0
    for path in sorted(masks.rglob("*.nii.gz")):
        mask, source = nib.load(path), nib.load(images / path.name)
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
