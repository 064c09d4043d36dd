"""Refine-my-mask: the inferer's ``mask=`` start mask, the last-channel route MONAI Label uses, the transform that
loads an existing label (uploaded or from MONAI Label's datastore), ``fanet infer --start_mask_dir``, and the
lossless result format for JPEG studies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from PIL import Image

from fanet_monai.cli import FanetCLI
from fanet_monai.data import BitmapReader, make_synthetic_dataset
from fanet_monai.inferers import IterativeRefinementInferer
from fanet_monai.label_server import LosslessResultd
from fanet_monai.refine_label import StartMaskFromLabeld, as_flag, attach_start_masks, datastore_label
from test_evaluation import SMALL, mask_echo_checkpoint


class Echo(torch.nn.Module):
    """logits = 20 * mask - 10: every pass returns the mask it was given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * x[:, -1:] - 10.0


def test_mask_keyword_replaces_otsu():
    images = torch.rand(2, 3, 8, 10)
    start = torch.zeros(2, 1, 8, 10)
    start[0, 0, 2:5, 3:7] = 1.0
    start[1, 0, 1:3, 1:3] = 1.0
    out = IterativeRefinementInferer(num_passes=3)(images, Echo(), mask=start)
    assert torch.equal(out > 0, start > 0.5)
    otsu = IterativeRefinementInferer(num_passes=1)(images, Echo())
    assert not torch.equal(otsu > 0, out > 0)
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 1, 8, 10\)"):
        IterativeRefinementInferer()(images, Echo(), mask=torch.zeros(2, 1, 4, 5))


def test_last_channel_start_mask_equals_mask_keyword():
    images = torch.rand(1, 3, 12, 12)
    start = (torch.rand(1, 1, 12, 12) > 0.7).float()
    inferer = IterativeRefinementInferer(num_passes=2, start_mask="last_channel", early_stop=True)
    stacked = MetaTensor(torch.cat([images, 0.4 + 0.2 * start], 1))  # resized labels: binarized at 0.5
    out = inferer(stacked, Echo())
    assert out.shape == (1, 1, 12, 12)
    assert torch.equal(out.as_tensor(), IterativeRefinementInferer(num_passes=2)(images, Echo(), mask=start))
    with pytest.raises(ValueError, match="do not pass mask= too"):
        inferer(stacked, Echo(), mask=start)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _loaded_image(path: Path) -> MetaTensor:
    """As the bundle loads it: channel first, MONAI's (W, H) spatial order."""
    return LoadImage(reader=BitmapReader(), image_only=True, ensure_channel_first=True)(str(path))


def test_start_mask_transform_uploaded_datastore_and_errors(tmp_path):
    image_path = _save(tmp_path / "studies" / "case.png", np.full((7, 9), 100, np.uint8))
    label = np.zeros((7, 9), np.uint8)
    label[2:5, 3:8] = 255
    upload = _save(tmp_path / "upload.png", label)
    image = _loaded_image(image_path)
    step = StartMaskFromLabeld(keys="image")

    out = step({"image": image, "label": str(upload)})["image"]  # uploaded 0/255 label
    assert isinstance(out, MetaTensor) and out.shape == (2, 9, 7)
    assert out.meta["filename_or_obj"] == str(image_path)
    assert torch.equal(out[1], torch.as_tensor(label.T > 0, dtype=torch.float32))

    with pytest.raises(ValueError, match="case.png: refine-my-mask needs the image's existing label"):
        step({"image": image})
    saved = np.zeros((7, 9), np.uint8)
    saved[0:2, 0:2] = 1
    _save(tmp_path / "studies" / "labels" / "final" / "case.png", saved)  # MONAI Label's local datastore layout
    assert datastore_label(image_path) == tmp_path / "studies" / "labels" / "final" / "case.png"
    assert torch.equal(step({"image": image})["image"][1], torch.as_tensor(saved.T > 0, dtype=torch.float32))

    wrong = _save(tmp_path / "wrong.png", np.zeros((7, 8), np.uint8))
    with pytest.raises(ValueError, match=r"wrong.png: start mask size \(8, 7\) differs from the image's \(9, 7\)"):
        step({"image": image, "label": str(wrong)})
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png: cannot read the start mask"):
        step({"image": image, "label": str(text)})
    off = StartMaskFromLabeld(keys="image", enabled="false")({"image": image, "label": str(upload)})
    assert off["image"] is image and as_flag("True") and not as_flag("0")


def test_attach_start_masks_pairs_by_stem_and_names_missing(tmp_path):
    masks = tmp_path / "masks"
    _save(masks / "a.png", np.zeros((4, 4), np.uint8))
    items = attach_start_masks([{"image": "/x/a.jpg"}], masks)
    assert items == [{"image": "/x/a.jpg", "label": str(masks / "a.png")}]
    assert attach_start_masks([{"image": "/x/b.jpg"}], None) == [{"image": "/x/b.jpg"}]
    with pytest.raises(ValueError, match=r"no start mask for 1 image\(s\): /x/b.jpg"):
        attach_start_masks([{"image": "/x/a.jpg"}, {"image": "/x/b.jpg"}], masks)
    with pytest.raises(FileNotFoundError, match="start mask folder not found"):
        attach_start_masks([{"image": "/x/a.jpg"}], tmp_path / "none")


def test_fanet_infer_start_mask_dir_refines_the_given_masks(tmp_path):
    """With a network that echoes its mask, the written masks are exactly the given start masks (odd size)."""
    data = make_synthetic_dataset(tmp_path / "data", num_images=2, height=38, width=50, seed=4, rgb=True)
    starts = tmp_path / "starts"
    rng = np.random.default_rng(0)
    expected = {}
    for path in sorted((data / "images").glob("*.png")):
        mask = np.zeros((38, 50), np.uint8)
        r, c = rng.integers(2, 20, 2)
        mask[r : r + 12, c : c + 20] = 255
        expected[path.name] = mask > 0
        _save(starts / path.name, mask)
    out = tmp_path / "out"
    FanetCLI().infer(
        str(data), str(out), bundle_root=str(tmp_path), start_mask_dir=str(starts), num_workers=0,
        ckpt_path=str(mask_echo_checkpoint(tmp_path / "echo.pt")), image_size=[32, 32], num_passes=3,
        **{"network_def#channels": SMALL},
    )
    for name, mask in expected.items():
        written = np.asarray(Image.open(out / name)) > 0
        assert written.shape == (38, 50)
        assert (written == mask).mean() > 0.97  # resized to 32x32 and back: edges may move by a pixel


def test_lossless_result_for_jpeg_inputs():
    step = LosslessResultd()
    assert step({"image_path": "/s/a.JPG"})["result_extension"] == ".png"
    assert "result_extension" not in step({"image_path": "/s/a.png"})
    assert step({"image_path": "/s/a.jpg", "result_extension": ".nii.gz"})["result_extension"] == ".nii.gz"
