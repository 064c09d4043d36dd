"""Shared pieces of the DICOM/PACS tests: a tiny trained bundle root, its inference overrides, dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from fanet_monai.bundle import bundle_configs, load_workflow
from fanet_monai.data import make_synthetic_dataset

SIZE = 64
#: inference overrides matching the tiny trained network
INFER = {"image_size": [SIZE, SIZE], "num_passes": 2, "num_workers": 0, "network_def#channels": [8, 16, 16, 16]}
DCIODVFY = shutil.which("dciodvfy")


#: what the tiny run declares it segments (recorded in its run.json; every SEG it writes must say so)
RUN_LABELS = {"label_names": {"1": "Blob"}, "label_codes": {"1": {
    "category": ["91723000", "SCT", "Anatomical structure"], "type": ["4147007", "SCT", "Mass"]}}}


def train_tiny_bundle(root: Path) -> Path:
    """Six short epochs of a narrow FANet at 64² (≈ 10 s): real weights in ``root/models/model.pt`` that find
    the synthetic blobs, so the masks compared in the tests are not trivially empty."""
    data = make_synthetic_dataset(root / "data", num_images=16, height=SIZE, width=SIZE, seed=5)
    workflow = load_workflow(bundle_configs("train"), "training", bundle_root=str(root), dataset_dir=str(data),
                             max_epochs=6, learning_rate=1e-2, batch_size=4, show_progress=False, **INFER,
                             label_names=RUN_LABELS["label_names"], label_codes=RUN_LABELS["label_codes"])
    workflow.run()
    assert (root / "models" / "model.pt").is_file()
    return root


def fanet_infer_png(bundle_root: Path, images: dict[str, np.ndarray], work: Path) -> dict[str, np.ndarray]:
    """``fanet infer`` (the bundle's own run) on PNGs of ``images`` (name → pixels): name → mask ``(H, W)`` bool."""
    from fanet_monai.cli import FanetCLI

    folder, masks = work / "png", work / "png_masks"
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in images.items():
        Image.fromarray(pixels).save(folder / f"{name}.png")
    FanetCLI().infer(str(folder), str(masks), bundle_root=str(bundle_root), **INFER)
    return {name: np.asarray(Image.open(masks / f"{name}.png")) > 0 for name in images}


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def smooth_rgb(height: int, width: int, seed: int) -> np.ndarray:
    """A synthetic uint8 RGB image with bright blobs (MONAI ``create_test_image_2d``, like the training data of
    :func:`train_tiny_bundle`), slightly different channels, smooth enough for JPEG."""
    from monai.data.synthetic import create_test_image_2d

    image, _ = create_test_image_2d(height, width, num_objs=4, rad_max=max(6, min(height, width) // 5),
                                    noise_max=0.05, num_seg_classes=1, random_state=np.random.RandomState(seed))
    gray = (255 * (image - image.min()) / max(float(image.max() - image.min()), 1e-6)).astype(np.uint8)
    return np.stack([gray, (gray * 0.9 + 12).astype(np.uint8), (gray * 0.95).astype(np.uint8)], axis=-1)


ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_USER, ORTHANC_PASSWORD = "fanet", "s3cret-Pw-42"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """A real Orthanc on loopback: a free HTTP port, temporary storage and index, DICOMweb plugin, HTTP basic
    authentication; ``start()``/``stop()`` can be repeated (same port, same storage) to simulate an outage."""

    def __init__(self, workdir: Path):
        import json

        self.workdir = workdir
        self.port, self.dicom_port = free_port(), free_port()
        self.config = workdir / "orthanc.json"
        storage = workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps({
            "Name": "fanet-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.port, "DicomPort": self.dicom_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }))
        self.process = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"

    def start(self, timeout: float = 30.0) -> None:
        import subprocess
        import time

        import requests

        log = open(self.workdir / "orthanc.log", "ab")
        self.process = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=log)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if requests.get(f"{self.url}/system", auth=(ORTHANC_USER, ORTHANC_PASSWORD), timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.workdir}/orthanc.log")
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def upload(self, path: Path | str) -> None:
        import requests

        response = requests.post(f"{self.url}/instances", data=Path(path).read_bytes(),
                                 auth=(ORTHANC_USER, ORTHANC_PASSWORD), timeout=30)
        response.raise_for_status()

    def seg_instances(self) -> list:
        """All SEG instances stored, as pydicom datasets (WADO-RS through dicomweb-client)."""
        from dicomweb_client.api import DICOMwebClient
        import requests

        session = requests.Session()
        session.auth = (ORTHANC_USER, ORTHANC_PASSWORD)
        client = DICOMwebClient(self.dicomweb, session=session)
        found = client.search_for_instances(search_filters={"Modality": "SEG"})
        return [client.retrieve_instance(r["0020000D"]["Value"][0], r["0020000E"]["Value"][0],
                                         r["00080018"]["Value"][0]) for r in found]


def echo_volume_run(tmp_path: Path, data: Path) -> Path:
    """A 3-D run (1 epoch on ``data``, classes Core/Rim, recorded like any run) whose ``model.pt`` is then replaced by
    echo weights (class 1 where the fed mask is, background elsewhere): masks that vary in space, so a grid or
    orientation slip between a SEG and ``fanet infer`` would show."""
    import torch

    from fanet_monai import FANet
    from fanet_monai.cli import run
    from fanet_monai.run import release_claims

    root = tmp_path / "run"
    tiny = ["--num_workers", "0", "--num_passes", "2", "--patch_size", "[16,16,16]", "--network_def#channels",
            "[4,8,8,8]", "--num_classes", "2", "--label_names", '{"1": "Core", "2": "Rim"}']
    assert run(["train", str(data), "--bundle_root", str(root), "--max_epochs", "1", "--batch_size", "2",
                "--show_progress", "False", "--target_spacing", "[1.0,1.0,1.0]", *tiny]) == 0
    release_claims()
    echo = FANet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 8, 8))
    with torch.no_grad():
        echo.head.conv.weight.zero_()
        echo.head.conv.weight[1, -1] = 20.0
        echo.head.conv.bias.copy_(torch.tensor([0.0, -10.0, -30.0]))
    torch.save(echo.state_dict(), root / "models" / "model.pt")
    return root


def tiny_volume_run(tmp_path: Path, num_passes: int = 2) -> tuple[Path, Path]:
    """``(data, run)``: three 20×20×24 synthetic tube volumes and a 3-D run trained one epoch on them by
    ``fanet train`` (narrow widths, 16³ patches, ``num_passes`` refinement passes recorded in the run)."""
    from fanet_monai.cli import run
    from fanet_monai.data import make_volume_dataset
    from fanet_monai.run import release_claims

    data = make_volume_dataset(tmp_path / "data", num_volumes=3, shape=(20, 20, 24), kind="tubes", seed=3)
    root = tmp_path / "run"
    assert run(["train", str(data), "--bundle_root", str(root), "--max_epochs", "1", "--batch_size", "2",
                "--show_progress", "False", "--num_workers", "0", "--num_passes", str(num_passes),
                "--patch_size", "[16,16,16]", "--network_def#channels", "[4,8,8,8]"]) == 0
    release_claims()
    return data, root
