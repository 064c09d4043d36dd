"""The MONAI Label app ``fanet label_app`` writes, in a real MONAI Label 0.8.5 server (issue 22, item 3): the
where-to-look map as its own inference task, the scoring method that stores each unlabeled image's score, the
``where_to_look`` strategy that picks the highest, and refine-my-mask that keeps an annotator's reviewed pixels.

The app serves the ``starts`` map (``--conf where_to_look starts``): the tiny run's refinement settles at once,
so its instability map is mostly 0. Real weights (the tiny 64² run of :func:`dicom_support.train_tiny_bundle`) so
that the maps are not trivial; the server runs from ``.venv-monailabel`` without ``fanet_monai`` installed (all
code comes from the app folder).
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from dicom_support import INFER, smooth_rgb
from fanet_monai.cli import FanetCLI
from test_monailabel_server import monailabel_python, requests, running_server

pytestmark = pytest.mark.slow

SIZES = {"small": (50, 62, 1), "square": (64, 64, 2), "tall": (70, 44, 3), "wide": (40, 72, 4)}


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, tiny_bundle_root):
    python = monailabel_python()
    tmp = tmp_path_factory.mktemp("monailabel_app")
    FanetCLI().label_app(str(tmp / "app"), bundle_root=str(tiny_bundle_root), label_name="blob", **INFER)
    studies = tmp / "studies"
    studies.mkdir()
    for name, (h, w, seed) in SIZES.items():
        Image.fromarray(smooth_rgb(h, w, seed)).save(studies / f"{name}.png")
    with running_server(python, tmp, "fanet", app="app", conf={"where_to_look": "starts"}) as (url, log):
        yield {"url": url, "dir": studies, "log": log}


def post_infer(server, model: str, image: str, params: dict | None = None, files: dict | None = None,
               output: str = "image"):
    return requests.post(f"{server['url']}/infer/{model}", params={"image": image, "output": output},
                         data={"params": json.dumps(params or {})}, files=files, timeout=300)


def png(response) -> np.ndarray:
    assert response.status_code == 200, response.text[:2000]
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_info_offers_the_map_task_the_scoring_method_and_the_strategy(app_server):
    info = requests.get(f"{app_server['url']}/info/", timeout=30).json()
    assert {"fanet", "fanet_where_to_look"} <= set(info["models"])
    assert info["models"]["fanet"]["config"]["keep_annotator_label"] is True
    assert "where_to_look" in info["strategies"] and {"random", "first"} <= set(info["strategies"])
    assert "fanet_where_to_look" in info["scoring"]


def test_the_map_task_returns_the_map_on_the_image_grid_and_its_score(app_server):
    for name, (h, w, _) in SIZES.items():
        look = png(post_infer(app_server, "fanet_where_to_look", name))
        assert look.shape == (h, w) and look.dtype == np.uint8
        assert 0 < look.max() <= 255 and look.min() == 0  # something to look at, most of the image not
        result = post_infer(app_server, "fanet_where_to_look", name, output="json")
        assert result.status_code == 200, result.text[:2000]
        score = result.json()["where_to_look_score"]
        assert 0 < score < 1 and abs(score - look.mean() / 255) < 0.01  # the mean of the same map
    mask = png(post_infer(app_server, "fanet", "square"))  # the segmentation task is unchanged
    assert set(np.unique(mask)) <= {0, 1}


def test_scoring_then_the_strategy_picks_the_image_with_the_highest_score(app_server):
    """MONAI Label starts the scoring methods itself once the app is up; a request while that runs is refused
    (429), one after it runs again (and skips the images the current model has scored)."""
    url = app_server["url"]
    response = requests.post(f"{url}/scoring/fanet_where_to_look", json={"device": "cpu"}, timeout=600)
    assert response.status_code in (200, 429), response.text[:2000]
    deadline = time.time() + 300
    while True:
        images = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
        scores = {k: v["image"]["info"].get("where_to_look_score") for k, v in images.items()}
        if all(s is not None for s in scores.values()) or time.time() > deadline:
            break
        time.sleep(2)
    assert set(scores) == set(SIZES) and all(0 < s < 1 for s in scores.values()), scores
    picked = requests.post(f"{url}/activelearning/where_to_look", json={}, timeout=60)
    assert picked.status_code == 200, picked.text[:2000]
    assert picked.json()["id"] == max(scores, key=scores.get)


def test_refine_my_mask_keeps_every_reviewed_pixel(app_server):
    """A label that contradicts the network in its reviewed top 60 % comes back exactly there (128 = not reviewed)."""
    name = "square"
    plain = png(post_infer(app_server, "fanet", name))
    label = np.full(plain.shape, 128, np.uint8)
    rows = plain.shape[0] * 6 // 10
    label[:rows] = np.where(plain[:rows] > 0, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, format="PNG")
    files = {"label": ("partial.png", buffer.getvalue(), "image/png")}
    kept = png(post_infer(app_server, "fanet", name, {"refine_existing_label": True, "unreviewed_value": "128"},
                          files))
    reviewed = label != 128
    assert np.array_equal(kept[reviewed] > 0, label[reviewed] == 255)
    start_only = png(post_infer(app_server, "fanet", name, {"refine_existing_label": True,
                                                            "keep_annotator_label": False,
                                                            "unreviewed_value": "128"}, files))
    assert ((start_only[reviewed] > 0) != (label[reviewed] == 255)).any()  # the old route overrules it
    local = png(post_infer(app_server, "fanet", name, {"refine_existing_label": True, "unreviewed_value": "128",
                                                       "refine_margin": "2"}, files))
    assert np.array_equal(local[reviewed] > 0, label[reviewed] == 255)
    assert not local[rows + 2:].any() and kept[rows + 2:].any()  # far from the reviewed rows: as sent (no label)
