"""``fanet train/evaluate/infer`` on a folder of volumes (issue 20): detected, said, run with the volume layer,
recorded in the run so evaluation and inference stay 3-D."""

from __future__ import annotations

import csv
import subprocess
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


@pytest.mark.slow
def test_a_3d_run_packages_into_a_self_contained_3d_bundle(tmp_path, capsys):
    """``fanet package`` of a volume run: volume.json merged into the packaged configs, metadata with three spatial
    dimensions (MONAI Label's dimension), one image channel + the mask, the run's class names; the packaged bundle
    infers volumes with ``python -m monai.bundle run`` in MONAI Label's environment (no fanet_monai installed)."""
    from test_monailabel_server import clean_env, monailabel_python

    data = make_volume_dataset(tmp_path / "data", num_volumes=5, shape=(20, 20, 24), kind="blobs", num_classes=2,
                               spacing=(1.0, 1.2, 1.5), seed=6)
    datalist = tmp_path / "list.json"
    items = [{"image": str(p), "label": str(data / "masks" / p.name)} for p in sorted((data / "images").iterdir())]
    datalist.write_text(json.dumps({"labels": {"0": "background", "1": "core", "2": "rim"}, "modality": {"0": "CT"},
                                    "training": items[:4], "validation": items[4:]}))
    root = tmp_path / "run"
    assert run(["train", str(datalist), "--bundle_root", str(root), "--max_epochs", "1", "--batch_size", "2",
                "--show_progress", "False", *TINY]) == 0
    release_claims()
    bundle = tmp_path / "bundle"
    assert run(["package", str(bundle), "--bundle_root", str(root)]) == 0
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert len(image["spatial_shape"]) == 3 and image["num_channels"] == 2
    assert pred["channel_def"] == {"0": "background", "1": "core", "2": "rim"} and pred["num_channels"] == 3
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["spatial_dims"] == 3 and inference["modality"] == "CT" and len(inference["target_spacing"]) == 3
    out = tmp_path / "pred"
    result = subprocess.run(
        [monailabel_python(), "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf", "--bundle_root", ".",
         "--dataset_dir", str(data / "images"), "--output_dir", str(out)],
        cwd=bundle, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for path in sorted((data / "images").iterdir()):
        mask, source = nib.load(out / path.name), nib.load(path)
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}


def test_refine_my_mask_on_volumes_starts_from_the_label_in_the_preprocessed_frame(tmp_path):
    """``--start_mask_dir`` on volumes: the annotator's label is loaded with the image and moved by the same
    orientation, resampling and crop, so a network that echoes its mask returns the label on the input's grid."""
    import torch

    from fanet_monai import FANet
    from fanet_monai.bundle import bundle_configs, run_workflow

    data = make_volume_dataset(tmp_path / "data", num_volumes=2, shape=(20, 16, 12), kind="tubes",
                               spacing=(1.0, 1.5, 2.0), seed=7)
    echo = FANet(spatial_dims=3, in_channels=1, channels=(8, 16, 16, 16))
    with torch.no_grad():  # logits 20 * mask - 10: one pass returns the start mask
        echo.head.conv.weight.zero_()
        echo.head.conv.weight[0, -1] = 20.0
        echo.head.conv.bias.fill_(-10.0)
    torch.save(echo.state_dict(), tmp_path / "echo.pt")
    out = tmp_path / "out"
    run_workflow(bundle_configs("inference", "volume"), "run", dataset_dir=str(data / "images"),
                 output_dir=str(out), ckpt_path=str(tmp_path / "echo.pt"), num_passes=1, num_workers=0,
                 start_mask_dir=str(data / "masks"), target_spacing=[1.0, 1.0, 1.0], patch_size=[16, 16, 16],
                 **{"network_def#channels": [8, 16, 16, 16]})
    for path in sorted((data / "images").iterdir()):
        mask = np.asarray(nib.load(out / path.name).dataobj) > 0
        label = np.asarray(nib.load(data / "masks" / path.name).dataobj) > 0
        assert mask.shape == label.shape and label.sum() > 20
        assert (mask == label).mean() > 0.995  # the Otsu start gives 0.96-0.97 here
