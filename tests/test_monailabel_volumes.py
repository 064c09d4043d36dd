"""A 3-D bundle from ``fanet package`` in a real MONAI Label 0.8.5 server (issue 20): ``/info`` shows dimension 3
and the run's label name, ``/infer`` on a NIfTI volume returns a label volume on the input's grid, refine-my-mask
starts from an uploaded label volume, ``/train`` trains the 3-D bundle on the datastore's volumes.

The bundle starts with "echo" weights (a 3-D FANet whose logits are ``20 * mask - 10``): plain inference returns
the Otsu start mask, refine-my-mask returns the uploaded label, so both start masks are visible through the API.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fanet_monai import FANet
from fanet_monai.data import make_volume_dataset
from fanet_monai.packaging import package_bundle
from test_monailabel_server import TIMINGS, download_app, monailabel_python, running_server

requests = pytest.importorskip("requests")

pytestmark = pytest.mark.slow

WIDTHS = [8, 16, 16, 16]
SETTINGS = {"spatial_dims": 3, "image_channels": 1, "input_mode": "patch", "patch_size": [16, 16, 16],
            "target_spacing": [1.0, 1.0, 1.0], "num_passes": 1, "num_workers": 0, "batch_size": 2,
            "show_progress": False, "network_def#channels": WIDTHS}


def echo_run(root: Path) -> Path:
    """A run folder whose ``models/model.pt`` is the 3-D mask-echo FANet."""
    net = FANet(spatial_dims=3, in_channels=1, channels=WIDTHS)
    with torch.no_grad():
        net.head.conv.weight.zero_()
        net.head.conv.weight[0, -1] = 20.0
        net.head.conv.bias.fill_(-10.0)
    (root / "models").mkdir(parents=True)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    python = monailabel_python()
    tmp = tmp_path_factory.mktemp("monailabel3d")
    app = download_app(python, tmp)
    bundle = package_bundle(app / "model" / "fanet3d", echo_run(tmp / "run"), layers=("volume",),
                            label_names={"1": "tube"}, **SETTINGS)  # a run's label names travel as a setting
    data = make_volume_dataset(tmp / "data", num_volumes=5, shape=(24, 20, 16), kind="tubes",
                               spacing=(1.0, 1.25, 1.5), seed=11)
    studies = tmp / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for i, path in enumerate(sorted((data / "images").iterdir())):
        (studies / f"vol_{i}.nii.gz").write_bytes(path.read_bytes())
        if i < 4:  # labelled: training data; vol_4 is unlabelled
            (studies / "labels" / "final" / f"vol_{i}.nii.gz").write_bytes((data / "masks" / path.name).read_bytes())
    with running_server(python, tmp, "fanet3d") as (url, log):
        yield {"url": url, "bundle": bundle, "studies": studies, "labels": data / "masks", "log": log, "tmp": tmp}


def infer(server, image: str, params: dict | None = None, files: dict | None = None) -> nib.Nifti1Image:
    response = requests.post(f"{server['url']}/infer/fanet3d", params={"image": image, "output": "image"},
                             data={"params": json.dumps(params or {})}, files=files, timeout=300)
    assert response.status_code == 200, response.text[:2000]
    assert response.content[:2] == b"\x1f\x8b", "a volume comes back as a gzipped NIfTI"
    path = server["tmp"] / f"answer_{time.time_ns()}.nii.gz"
    path.write_bytes(response.content)
    return nib.load(path)


def test_info_shows_a_3d_model_with_the_runs_label(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    model = info["models"]["fanet3d"]
    assert model["dimension"] == 3 and model["labels"] == {"tube": 1} and model["type"] == "segmentation"
    assert "fanet3d" in info["trainers"]


def test_infer_returns_a_label_volume_on_the_input_grid(server):
    source = nib.load(server["studies"] / "vol_4.nii.gz")
    mask = infer(server, "vol_4")
    values = np.asarray(mask.dataobj)
    assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-4)
    assert set(np.unique(values)) <= {0, 1} and values.any()


def test_refine_my_mask_starts_from_an_uploaded_label_volume(server):
    label = np.asarray(nib.load(server["labels"] / "tubes_004.nii.gz").dataobj) > 0
    rough = np.zeros_like(label)
    rough[4:14, 3:12, 2:10] = True  # a box, unlike the volume's Otsu mask
    affine = nib.load(server["studies"] / "vol_4.nii.gz").affine
    upload = gzip.compress(nib.Nifti1Image(rough.astype(np.uint8), affine).to_bytes())
    files = {"label": ("rough.nii.gz", upload, "application/gzip")}
    refined = np.asarray(infer(server, "vol_4", {"refine_existing_label": True}, files).dataobj) > 0
    assert (refined == rough).mean() > 0.99
    plain = np.asarray(infer(server, "vol_4").dataobj) > 0
    assert (plain == rough).mean() < 0.95  # the switch is per request


def test_train_on_the_datastore_volumes_writes_new_weights(server):
    weights = server["bundle"] / "models" / "model.pt"
    before = hashlib.md5(weights.read_bytes()).hexdigest()
    start = time.time()
    response = requests.post(f"{server['url']}/train/fanet3d", params={"run_sync": True},
                             json={"val_split": 0.25, "device": "cpu", "max_epochs": 1, "pretrained": True},
                             timeout=900)
    TIMINGS["train_3d_s"] = time.time() - start
    assert response.status_code == 200, response.text[-2000:]
    assert hashlib.md5(weights.read_bytes()).hexdigest() != before, "training did not write models/model.pt"
    log = server["log"].read_text().split("Train Request")[-1]
    assert "Epoch[1] Complete" in log and "feedback_mask_dice" in log
    mask = infer(server, "vol_4")
    assert mask.shape == nib.load(server["studies"] / "vol_4.nii.gz").shape
