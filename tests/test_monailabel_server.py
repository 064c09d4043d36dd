"""The packaged bundle in a real MONAI Label 0.8.5 server (``monaibundle`` app) on loopback, through its REST API.

The server runs from ``.venv-monailabel`` (``scripts/setup_monailabel_env.sh``), where ``fanet_monai`` is not
installed: everything it runs comes from the bundle folder ``fanet package`` wrote. The bundle is tiny (narrow
widths, 32×32 network input) and starts with "echo" weights (the network returns its feedback mask), which makes
the start masks visible: plain inference returns Otsu's mask, refine-my-mask returns the given label; after
``/train`` the weights are new and the answers change. Skips only when the MONAI Label environment cannot be built.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fanet_monai.data import make_synthetic_dataset
from fanet_monai.feedback import otsu_mask_torch
from fanet_monai.packaging import package_bundle
from test_evaluation import SMALL, mask_echo_checkpoint

requests = pytest.importorskip("requests")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup_monailabel_env.sh"
TINY = {
    "image_size": [32, 32],
    "network_def#channels": SMALL,
    "num_workers": 0,
    "batch_size": 2,
    "num_passes": 3,
    "show_progress": False,
}
TIMINGS: dict[str, float] = {}


def monailabel_python() -> str:
    """Python of the MONAI Label environment (built or reused by the setup script); skips when it cannot be built."""
    if os.environ.get("MONAILABEL_PYTHON"):
        return os.environ["MONAILABEL_PYTHON"]
    start = time.time()
    result = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        pytest.skip(f"the MONAI Label environment could not be built ({SETUP.name}): {result.stderr[-800:]}")
    TIMINGS["env_setup_s"] = time.time() - start
    return result.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict:
    """The server's environment: no PYTHONPATH (nothing from this repository is importable)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def write_studies(folder: Path, tmp: Path) -> dict:
    """Studies of odd sizes: RGB and grayscale, PNG and JPEG; labels for the training images only."""
    rgb = make_synthetic_dataset(tmp / "rgb", num_images=6, height=50, width=62, seed=1, rgb=True)
    gray = make_synthetic_dataset(tmp / "gray", num_images=3, height=45, width=33, seed=2, rgb=False)
    (folder / "labels" / "final").mkdir(parents=True)
    studies = {}
    for i, path in enumerate(sorted((rgb / "images").glob("*.png"))):
        name = f"rgb_{i}"
        if i == 5:  # JPEG, no label
            Image.open(path).convert("RGB").save(folder / f"{name}.jpg", quality=90)
            studies["rgb_jpeg"] = name
            continue
        shutil.copy(path, folder / f"{name}.png")
        if i < 4:  # labeled: training data
            label = (np.asarray(Image.open(rgb / "masks" / path.name)) > 0).astype(np.uint8)
            Image.fromarray(label).save(folder / "labels" / "final" / f"{name}.png")
        else:
            studies["rgb_png"] = name
    for i, path in enumerate(sorted((gray / "images").glob("*.png"))):
        name = f"gray_{i}"
        if i == 0:
            Image.open(path).convert("L").save(folder / f"{name}.jpg", quality=90)
            studies["gray_jpeg"] = name
        else:
            shutil.copy(path, folder / f"{name}.png")
            studies.setdefault("gray_png", name)
        if i == 2:
            studies["gray_to_label"] = name
    return studies


def download_app(python: str, tmp: Path) -> Path:
    """MONAI Label's ``monaibundle`` sample app under ``tmp/apps`` (its bundles go to ``model/<name>``)."""
    probe = subprocess.run([python, "-c", "import fanet_monai"], env=clean_env(), cwd=tmp, capture_output=True)
    assert probe.returncode != 0, "fanet_monai must not be importable in the MONAI Label environment"
    subprocess.run(
        [python, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle", "--output", "apps"],
        cwd=tmp, env=clean_env(), check=True, capture_output=True, timeout=300,
    )
    return tmp / "apps" / "monaibundle"


@contextmanager
def running_server(python: str, tmp: Path, model: str, studies: str = "studies",
                   env: dict | None = None, app: str = "apps/monaibundle",
                   conf: dict | None = None) -> Iterator[tuple[str, Path]]:
    """A MONAI Label server for the app ``tmp/<app>`` (default: the stock ``monaibundle``) with the bundle ``model``,
    studies in ``tmp/studies`` (or a DICOMweb URL), on a free loopback port, its environment's ``bin`` on ``PATH``
    (dcmqi's tools), ``env`` added and the app settings ``conf`` (``--conf KEY VALUE``); yields ``(url, log file)``
    once ``/info/`` answers, and stops it afterwards."""
    port = free_port()
    log = open(tmp / "server.log", "w")
    environment = clean_env()
    environment["PATH"] = f"{Path(python).parent}{os.pathsep}{environment.get('PATH', '')}"
    proc = subprocess.Popen(
        [python, "-m", "monailabel.main", "start_server", "--app", app, "--studies", studies,
         "--conf", "models", model, "--conf", "zoo_source", "local", "--conf", "sam2", "false",
         *[item for key, value in (conf or {}).items() for item in ("--conf", key, str(value))],
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp, env={**environment, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    up = time.time()
    try:
        while True:
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.time() - up > 180:
                log.flush()
                pytest.fail(f"MONAI Label server did not start: {(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        TIMINGS[f"server_start_{model}_s"] = time.time() - up
        yield url, tmp / "server.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    python = monailabel_python()
    tmp = tmp_path_factory.mktemp("monailabel")
    start = time.time()
    app = download_app(python, tmp)
    run = tmp / "run"
    mask_echo_checkpoint(run / "models" / "model.pt")
    bundle = package_bundle(app / "model" / "fanet", run, label_name="polyp", **TINY)
    studies_dir = tmp / "studies"
    studies_dir.mkdir()
    studies = write_studies(studies_dir, tmp)
    with running_server(python, tmp, "fanet") as (url, log):
        TIMINGS["setup_total_s"] = time.time() - start
        yield {"url": url, "bundle": bundle, "studies": studies, "dir": studies_dir, "log": log}
    print(f"\nMONAI Label server test timings: {json.dumps({k: round(v, 1) for k, v in TIMINGS.items()})}")


def infer(server, image: str, params: dict | None = None, files: dict | None = None, output: str = "image"):
    start = time.time()
    response = requests.post(
        f"{server['url']}/infer/fanet", params={"image": image, "output": output},
        data={"params": json.dumps(params or {})}, files=files, timeout=300,
    )
    TIMINGS[f"infer_{output}_last_s"] = time.time() - start
    return response


def mask_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text[:2000]
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n", "masks must come back as PNG (lossless)"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def study_path(server, name: str) -> Path:
    return next(p for p in server["dir"].iterdir() if p.is_file() and p.stem == name)


def otsu_of(path: Path) -> np.ndarray:
    """The bundle's Otsu start mask of ``path`` computed at the input size (the echo network returns it)."""
    gray = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    image = torch.as_tensor(gray).permute(2, 0, 1)[None]
    return otsu_mask_torch(image)[0, 0].numpy() > 0


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def test_info_lists_the_model_with_its_label_and_dimension(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    model = info["models"]["fanet"]
    assert model["labels"] == {"polyp": 1} and model["dimension"] == 2 and model["type"] == "segmentation"
    assert model["config"]["refine_existing_label"] is False  # the refine-my-mask switch in the options panel
    assert "fanet" in info["trainers"]


@pytest.mark.parametrize("kind", ["rgb_png", "rgb_jpeg", "gray_png", "gray_jpeg"])
def test_infer_returns_a_uint8_mask_of_the_input_size(server, kind):
    name = server["studies"][kind]
    path = study_path(server, name)
    mask = mask_of(infer(server, name))
    width, height = Image.open(path).size
    assert mask.shape == (height, width) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1} and mask.any()
    # echo weights: the refinement returns its Otsu start mask (computed on the image anti-aliased and resized to
    # 32x32, then resized back: it differs from Otsu at the input size along the edges)
    assert agreement(mask > 0, otsu_of(path)) > 0.85


def test_infer_json_reports_latency(server):
    params = infer(server, server["studies"]["rgb_png"], output="json").json()
    assert params["latencies"]["infer"] > 0 and params["latencies"]["total"] > 0


def test_refine_my_mask_from_an_uploaded_label(server):
    name = server["studies"]["rgb_png"]
    height, width = np.asarray(Image.open(study_path(server, name))).shape[:2]
    rough = np.zeros((height, width), np.uint8)
    rough[5:30, 10:50] = 255  # a box, unlike the image's Otsu mask
    buffer = io.BytesIO()
    Image.fromarray(rough).save(buffer, format="PNG")
    files = {"label": ("rough.png", buffer.getvalue(), "image/png")}
    mask = mask_of(infer(server, name, {"refine_existing_label": True}, files))
    assert mask.shape == (height, width) and agreement(mask > 0, rough > 0) > 0.97
    plain = mask_of(infer(server, name))  # the switch is per request: off again
    assert agreement(plain > 0, rough > 0) < 0.9


def test_save_label_then_refine_it_from_the_datastore(server):
    name = server["studies"]["gray_to_label"]
    height, width = np.asarray(Image.open(study_path(server, name))).shape[:2]
    label = np.zeros((height, width), np.uint8)
    label[10:35, 4:20] = 1
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, format="PNG")
    response = requests.put(
        f"{server['url']}/datastore/label", params={"image": name, "tag": "final"},
        files={"label": (f"{name}.png", buffer.getvalue(), "image/png")}, timeout=60,
    )
    assert response.status_code == 200, response.text
    assert any(p.stem == name for p in (server["dir"] / "labels" / "final").iterdir())
    mask = mask_of(infer(server, name, {"refine_existing_label": "true"}))
    assert agreement(mask > 0, label > 0) > 0.97


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server):
    url = server["url"]
    unknown = infer(server, "no_such_image")
    assert unknown.status_code == 404 and "image not found" in unknown.json()["detail"]
    corrupt = requests.post(f"{url}/infer/fanet", params={"output": "image"}, data={"params": "{}"},
                            files={"file": ("broken.png", b"\x89PNG\r\n\x1a\nnot really", "image/png")}, timeout=120)
    assert corrupt.status_code == 400 and "not a readable 2-D image" in corrupt.json()["detail"]
    text = requests.post(f"{url}/infer/fanet", params={"output": "image"}, data={"params": "{}"},
                         files={"file": ("notes.txt", b"hello", "text/plain")}, timeout=120)
    assert text.status_code == 400 and "not a readable 2-D image" in text.json()["detail"]
    no_label = infer(server, server["studies"]["rgb_jpeg"], {"refine_existing_label": True})
    assert no_label.status_code == 404 and "needs the image's existing label" in no_label.json()["detail"]
    assert requests.get(f"{url}/info/", timeout=30).status_code == 200
    assert mask_of(infer(server, server["studies"]["rgb_png"])).any()


def train(server, **params):
    start = time.time()
    response = requests.post(
        f"{server['url']}/train/fanet", params={"run_sync": True},
        json={"val_split": 0.25, "device": "cpu", **params}, timeout=900,
    )
    TIMINGS[f"train_{params.get('max_epochs')}_epochs_s"] = time.time() - start
    return response


def test_train_writes_new_weights_that_the_next_infer_uses(server):
    weights = server["bundle"] / "models" / "model.pt"
    before = hashlib.md5(weights.read_bytes()).hexdigest()
    name = server["studies"]["rgb_png"]
    echo_mask = mask_of(infer(server, name))
    # from scratch, surely not the echo network: MONAI Label 0.8.5 crashes on pretrained=false
    # (os.path.exists(None) in BundleTrainTask._load_checkpoint); without a model.pt it starts from scratch
    weights.unlink()
    response = train(server, max_epochs=2, pretrained=True)
    assert response.status_code == 200, response.text[-2000:]
    assert hashlib.md5(weights.read_bytes()).hexdigest() != before, "training did not write models/model.pt"
    log = server["log"].read_text().split("Train Request")[-1]
    assert "Epoch[2] Complete" in log and "feedback_mask_dice" in log  # the bundle's feedback training ran
    trained = mask_of(infer(server, name))
    assert trained.shape == echo_mask.shape and trained.dtype == np.uint8 and set(np.unique(trained)) <= {0, 1}
    assert not np.array_equal(trained, echo_mask), "the next /infer did not use the new weights"


def test_pretrained_training_continues_from_model_pt(server):
    weights = server["bundle"] / "models" / "model.pt"
    response = train(server, max_epochs=1, pretrained=True)
    assert response.status_code == 200, response.text[-2000:]
    log = server["log"].read_text().split("Train Request")[-1]
    assert f"Add Checkpoint Loader for Path: {weights}" in log and "Restored all variables from" in log


def test_async_training_runs_in_the_background_and_reports_done(server):
    weights = server["bundle"] / "models" / "model.pt"
    before = hashlib.md5(weights.read_bytes()).hexdigest()
    response = requests.post(
        f"{server['url']}/train/fanet", params={"run_sync": False},
        json={"val_split": 0.25, "device": "cpu", "max_epochs": 1, "pretrained": True}, timeout=60,
    )
    assert response.status_code == 200, response.text[-2000:]
    assert response.json()["status"] in ("SUBMITTED", "RUNNING")  # answered before the training finished
    deadline, status = time.time() + 600, {}
    while time.time() < deadline:
        status = requests.get(f"{server['url']}/train/", timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(0.5)
    assert status.get("status") == "DONE", status
    assert hashlib.md5(weights.read_bytes()).hexdigest() != before, "async training did not write models/model.pt"
    assert requests.get(f"{server['url']}/info/", timeout=30).status_code == 200


def test_training_on_a_label_of_the_wrong_size_fails_naming_the_file(server):
    name = server["studies"]["gray_png"]
    wrong = np.zeros((7, 9), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(wrong).save(buffer, format="PNG")
    response = requests.put(
        f"{server['url']}/datastore/label", params={"image": name, "tag": "final"},
        files={"label": (f"{name}.png", buffer.getvalue(), "image/png")}, timeout=60,
    )
    assert response.status_code == 200
    response = train(server, max_epochs=1, pretrained=True)
    assert response.status_code == 500  # MONAI Label answers any training failure with a bare 500
    expected = f"labels/final/{name}.png: mask size 9x7 (WxH) differs from its image"
    deadline = time.time() + 20
    while expected not in (log := server["log"].read_text()) and time.time() < deadline:
        time.sleep(0.2)  # uvicorn logs the traceback after it answered
    assert expected in log, log[-3000:]
    assert requests.get(f"{server['url']}/info/", timeout=30).status_code == 200
