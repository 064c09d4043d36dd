"""Bad input fails early and clearly: every case raises its own message naming the file, from ``prepare`` (no
``OUT.json``, no generated folders left) and from the training bundle (no checkpoint or log directory). And the
input variants that are fine — RGB, gray, RGBA, 16-bit, palette/GIF masks, 0/1, 0/255 and JPEG-noisy masks — come
out of the bundle's preprocessing as a 3-channel [0, 1] image and a 0/1 label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image

from fanet_monai.bundle import bundle_configs, load_workflow
from fanet_monai.data.checks import DataCheckError, binarize_mask, check_datalist
from fanet_monai.data.layouts import prepare

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"


def save(path: Path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def square_mask(h=24, w=32, value=255):
    mask = np.zeros((h, w), np.uint8)
    mask[6:18, 8:20] = value
    return mask


def make_folder(root: Path, n=6, h=24, w=32):
    for i in range(n):
        save(root / "images" / f"s{i}.png", np.full((h, w, 3), 30 * i, np.uint8))
        save(root / "masks" / f"s{i}.png", square_mask(h, w))
    return root


def truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def grayscale_picture(path: Path, h=24, w=32):
    save(path, np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1)))


def label_map(path: Path, h=24, w=32):
    mask = np.zeros((h, w), np.uint8)
    mask[:, 8:16], mask[:, 16:24], mask[:, 24:] = 1, 2, 3
    save(path, mask)


# each case: (name, how to break the folder, regex the message must match, the file it must name)
CASES = [
    ("truncated image", lambda r: truncate(r / "images" / "s3.png"), "unreadable or truncated image", "images/s3.png"),
    ("not an image", lambda r: (r / "images" / "s2.png").write_bytes(b"not a png at all"),
     "unreadable or truncated image", "images/s2.png"),
    ("truncated mask", lambda r: truncate(r / "masks" / "s4.png"), "unreadable or truncated image", "masks/s4.png"),
    ("image without mask", lambda r: (r / "masks" / "s1.png").unlink(), "image has no mask", "images/s1.png"),
    ("mask without image", lambda r: save(r / "masks" / "extra.png", square_mask()), "mask has no image",
     "masks/extra.png"),
    ("size mismatch", lambda r: save(r / "masks" / "s5.png", square_mask(20, 32)), "differs from its image",
     "masks/s5.png"),
    ("grayscale picture as mask", lambda r: grayscale_picture(r / "masks" / "s0.png"),
     "thresholding cannot explain", "masks/s0.png"),
    ("multi-class label map", lambda r: label_map(r / "masks" / "s2.png"), "none above 127", "masks/s2.png"),
    ("duplicate stems", lambda r: save(r / "images" / "s3.jpg", np.zeros((24, 32, 3), np.uint8)),
     "duplicate stem 's3'", "images/s3"),
]


@pytest.mark.parametrize("name, breakage, message, filename", CASES, ids=[c[0] for c in CASES])
def test_prepare_names_the_file_and_writes_nothing(tmp_path, name, breakage, message, filename):
    root = make_folder(tmp_path / "data")
    breakage(root)
    out = tmp_path / "out" / "OUT.json"
    with pytest.raises(DataCheckError, match=message) as error:
        prepare("folder", root, out, quiet=True)
    assert filename in str(error.value)
    assert not out.exists() and not (tmp_path / "out").exists()


def test_empty_dataset(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    with pytest.raises(DataCheckError, match=r"data: the 'training' list is empty"):
        prepare("folder", tmp_path / "data", tmp_path / "OUT.json", quiet=True)
    assert not (tmp_path / "OUT.json").exists()
    with pytest.raises(DataCheckError, match="no DSB 2018 cases"):
        prepare("dsb2018", tmp_path / "data", tmp_path / "OUT.json", quiet=True)


def test_several_problems_are_listed_together(tmp_path):
    root = make_folder(tmp_path / "data")
    truncate(root / "images" / "s1.png")
    save(root / "masks" / "s2.png", square_mask(20, 32))
    with pytest.raises(DataCheckError, match="2 problems") as error:
        prepare("folder", root, tmp_path / "OUT.json", quiet=True)
    assert "images/s1.png" in str(error.value) and "masks/s2.png" in str(error.value)


def test_generated_files_are_discarded_on_failure(tmp_path):
    case = tmp_path / "stage1_train" / "abc123"
    save(case / "images" / "abc123.png", np.zeros((24, 32, 4), np.uint8))
    save(case / "masks" / "n1.png", square_mask())
    save(case / "masks" / "n2.png", square_mask(20, 32))  # one nucleus mask of the wrong size
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataCheckError, match="n2.png: mask size"):
        prepare("dsb2018", tmp_path, out / "dsb.json", quiet=True)
    assert list(out.iterdir()) == []  # no dsb2018_masks/, no temporary folder, no JSON

    volume = [Image.fromarray(np.zeros((16, 16), np.uint8)) for _ in range(3)]
    volume[0].save(tmp_path / "train-volume.tif", save_all=True, append_images=volume[1:])
    volume[0].save(tmp_path / "train-labels.tif", save_all=True, append_images=volume[1:2])
    with pytest.raises(DataCheckError, match="train-labels.tif: 2 mask slices for 3 image slices"):
        prepare("em-isbi2012", tmp_path, out / "em.json", quiet=True)
    assert list(out.iterdir()) == []


def test_jpeg_noisy_masks_are_thresholded_with_a_warning(tmp_path):
    root = make_folder(tmp_path / "data")
    noisy = square_mask().astype(np.int16)
    rng = np.random.RandomState(0)
    noisy = np.clip(noisy + rng.randint(-20, 21, noisy.shape), 0, 255).astype(np.uint8)
    save(root / "masks" / "s1.png", noisy)
    with pytest.warns(UserWarning, match=r"1 masks are not exactly two-level .* changed \d+ pixels"):
        report = prepare("folder", root, tmp_path / "OUT.json", quiet=True)
    assert any("changed" in p for p in report.problems)
    foreground, changed = binarize_mask(noisy)
    assert np.array_equal(foreground, square_mask() > 0)
    assert changed == int(((noisy != 0) & (noisy != 255)).sum()) > 0


def test_checked_datalist_json_names_missing_files(tmp_path):
    root = make_folder(tmp_path / "data")
    datalist = {"training": [{"image": str(root / "images" / "s0.png"), "label": str(root / "masks" / "gone.png")}],
                "validation": [{"image": str(root / "images" / "s1.png"), "label": str(root / "masks" / "s1.png")}]}
    (tmp_path / "d.json").write_text(json.dumps(datalist))
    with pytest.raises(DataCheckError, match=r"masks/gone.png: file not found"):
        check_datalist(tmp_path / "d.json")
    datalist["validation"].append(datalist["training"][0] | {"label": str(root / "masks" / "s0.png")})
    datalist["training"][0]["label"] = str(root / "masks" / "s0.png")
    (tmp_path / "d.json").write_text(json.dumps(datalist))
    with pytest.raises(DataCheckError, match=r"s0.png: image is in training and validation"):
        check_datalist(tmp_path / "d.json")
    datalist["validation"].pop()
    datalist["test"] = []
    (tmp_path / "d.json").write_text(json.dumps(datalist))
    assert check_datalist(tmp_path / "d.json").counts == {"training": 1, "validation": 1}
    with pytest.raises(DataCheckError, match=r"d.json: the 'test' list is empty"):  # evaluation of the test list
        check_datalist(tmp_path / "d.json", ["test"])
    with pytest.raises(DataCheckError, match=r"d.json.*no.*'missing'|Data list missing"):
        check_datalist(tmp_path / "d.json", ["missing"])


# -- the bundle checks before training starts ------------------------------------------------------------------------
def bundle(tmp_path, dataset, **extra):
    overrides = {
        "bundle_root": str(tmp_path / "run"), "dataset_dir": str(dataset), "image_size": [32, 32], "batch_size": 2,
        "num_workers": 0, "max_epochs": 1, "num_passes": 1, "show_progress": False,
        "network_def#channels": [8, 8, 8, 8],
    }
    overrides.update(extra)
    return load_workflow(bundle_configs("train"), **overrides)


def cause_chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


@pytest.mark.parametrize("name, breakage, message, filename", [CASES[0], CASES[5], CASES[7]],
                         ids=[CASES[0][0], CASES[5][0], CASES[7][0]])
def test_bundle_fails_before_training_naming_the_file(tmp_path, name, breakage, message, filename):
    root = make_folder(tmp_path / "data")
    breakage(root)
    with pytest.raises(Exception) as error:
        bundle(tmp_path, root).run()
    checks = [e for e in cause_chain(error.value) if isinstance(e, DataCheckError)]
    assert checks and filename in str(checks[0]) and message.split(" ")[0] in str(checks[0])
    assert not (tmp_path / "run").exists()  # no models/ (checkpoints), no eval/ (logs)


def test_bundle_check_can_be_switched_off(tmp_path):
    root = make_folder(tmp_path / "data")
    label_map(root / "masks" / "s2.png")
    workflow = bundle(tmp_path, root, check_data=False)  # no DataCheckError at start-up
    assert workflow.parser.get_parsed_content("check_data") is False


# -- input handling --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def preprocessing():
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["image_size"] = [32, 24]  # bitmaps load as (x, y) = (W, H): no resampling for these 24x32 files
    return Compose(parser.get_parsed_content("preprocessing"))


def write(path: Path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return str(path)


GRAY = np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1))  # 0 ... 248, left to right


@pytest.mark.parametrize("kind", ["rgb", "gray", "rgba", "gray16", "gray16_dark", "tif16", "palette"])
def test_images_become_three_channel_unit_range(tmp_path, preprocessing, kind):
    label = write(tmp_path / "m.png", square_mask())
    if kind == "rgb":
        path, expected = write(tmp_path / "i.png", np.stack([GRAY] * 3, -1)), GRAY / 255
    elif kind == "gray":
        path, expected = write(tmp_path / "i.png", GRAY), GRAY / 255
    elif kind == "rgba":
        rgba = np.stack([GRAY] * 3 + [np.full_like(GRAY, 7)], -1)
        path, expected = write(tmp_path / "i.png", rgba), GRAY / 255
    elif kind == "gray16":
        wide = GRAY.astype(np.uint16) * 257  # 0 ... 63736
        path, expected = write(tmp_path / "i.png", wide), wide / 65535
    elif kind == "gray16_dark":  # a 16-bit image whose values happen to be small: still scaled by 65535
        dark = GRAY.astype(np.uint16)
        path, expected = write(tmp_path / "i.png", dark), dark / 65535
    elif kind == "tif16":
        wide = GRAY.astype(np.uint16) * 257
        path, expected = write(tmp_path / "i.tif", wide), wide / 65535
    else:
        image = Image.fromarray(GRAY).convert("P")
        image.save(tmp_path / "i.gif")
        path, expected = str(tmp_path / "i.gif"), np.asarray(image.convert("L")) / 255
    image = preprocessing({"image": path, "label": label})["image"]
    assert image.shape == (3, 32, 24) and image.dtype == torch.float32
    for channel in range(3):  # gray repeated, alpha dropped, scaled by the stored type's range
        assert np.allclose(image[channel].numpy(), expected.T, atol=1e-4)


@pytest.mark.parametrize("kind", ["0_255", "0_1", "jpeg_noisy", "gif", "rgb", "palette_colour"])
def test_masks_become_binary_labels(tmp_path, preprocessing, kind):
    image = write(tmp_path / "i.png", np.stack([GRAY] * 3, -1))
    mask = square_mask()
    if kind == "0_255":
        path = write(tmp_path / "m.png", mask)
    elif kind == "0_1":
        path = write(tmp_path / "m.png", (mask > 0).astype(np.uint8))
    elif kind == "jpeg_noisy":
        noisy = np.clip(mask.astype(int) + np.random.RandomState(1).randint(-25, 26, mask.shape), 0, 255)
        path = write(tmp_path / "m.png", noisy.astype(np.uint8))
    elif kind == "gif":
        Image.fromarray(mask).save(tmp_path / "m.gif")
        path = str(tmp_path / "m.gif")
    elif kind == "rgb":
        path = write(tmp_path / "m.png", np.stack([mask] * 3, -1))
    else:  # palette PNG: index 1 is a dark red (luminance 38)
        image_p = Image.fromarray((mask > 0).astype(np.uint8), "P")
        image_p.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
        image_p.save(tmp_path / "m.png")
        path = str(tmp_path / "m.png")
    label = preprocessing({"image": image, "label": path})["label"]
    assert label.shape == (1, 32, 24) and set(torch.unique(label).tolist()) == {0.0, 1.0}
    assert int(label.sum()) == int((mask > 0).sum())
    foreground, _ = binarize_mask(np.asarray(Image.open(path).convert("RGB")))
    assert int(foreground.sum()) == int(label.sum())  # the check and the bundle binarize alike


def test_inference_preprocessing_matches_training(tmp_path):
    """inference.json has its own image-only copy of the preprocessing: same reader, same scaling."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["image_size"] = [32, 24]
    inference = parser.get_parsed_content("preprocessing")
    wide = GRAY.astype(np.uint16) * 257
    image = inference({"image": write(tmp_path / "i16.png", wide)})["image"]
    assert image.shape == (3, 32, 24) and np.allclose(image[1].numpy(), (wide / 65535).T, atol=1e-4)
    import nibabel as nib

    pixels = np.tile(np.linspace(0, 230, 32, dtype=np.float32), (24, 1))
    nib.save(nib.Nifti1Image(pixels, np.eye(4)), tmp_path / "f.nii.gz")  # float NIfTI in 0-255: scaled by 255
    parser["image_size"] = [24, 32]
    image = parser.get_parsed_content("preprocessing", lazy=False)({"image": str(tmp_path / "f.nii.gz")})["image"]
    assert np.allclose(image[0].numpy(), pixels / 255, atol=1e-4)
