"""``fanet train/evaluate/infer`` on a folder of volumes (issue 20): detected, said, run with the volume layer,
recorded in the run so evaluation and inference stay 3-D."""

from __future__ import annotations

import json

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
