"""Volume data as MONAI users bring them (issue 20): folders of NIfTI / NRRD / MetaImage volumes paired by name, the
volume checks (one test per check, each asserting that the message names the file), ``prepare msd`` on a tiny
fake Decathlon task, and the shared Decathlon hippocampus cases when they are there."""

from __future__ import annotations

import json
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest

from fanet_monai.data import DataCheckError, make_volume_dataset
from fanet_monai.data import inputs as inputs_module
from fanet_monai.data.decathlon import msd_properties, prepare_msd
from fanet_monai.data.layouts import prepare
from fanet_monai.data.volumes import (
    check_volume_datalist,
    check_volume_items,
    is_volume_file,
    is_volume_folder,
    load_volume_datalist,
    volume_folder_datalist,
)

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "msd_hippocampus"
SHAPE = (16, 20, 18)


def save(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    """``array`` as NIfTI (dtype kept), affine ``diag(spacing)`` + ``origin``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def image(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.RandomState(seed).rand(*shape).astype(np.float32)


def label(shape=SHAPE, codes=(1,), dtype=np.uint8) -> np.ndarray:
    """A label with one box per class code."""
    out = np.zeros(shape, dtype)
    for k, code in enumerate(codes):
        out[2 + 4 * k : 5 + 4 * k, 3:9, 4:10] = code
    return out


def pair(root: Path, name: str = "case_0", image_array=None, label_array=None, **geometry) -> dict:
    """Write ``root/images/NAME.nii.gz`` and ``root/labels/NAME.nii.gz``; returns the datalist item."""
    image_array = image() if image_array is None else image_array
    label_array = label(image_array.shape[:3]) if label_array is None else label_array
    return {"image": str(save(root / "images" / f"{name}.nii.gz", image_array, **geometry)),
            "label": str(save(root / "labels" / f"{name}.nii.gz", label_array, **geometry))}


def refused(items, **kwargs) -> str:
    """The message of the :class:`DataCheckError` the check raises."""
    with pytest.raises(DataCheckError) as caught:
        check_volume_items(items, **kwargs)
    return str(caught.value)


def truncate(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


# -- files and folders ------------------------------------------------------------------------------------------------
def test_volume_suffixes():
    assert all(is_volume_file(n) for n in ("a.nii", "a.nii.gz", "A.NII.GZ", "a.nrrd", "a.mha"))
    assert not any(is_volume_file(n) for n in ("a.png", "a.gz", "a.mhd", "nii"))


def test_volume_folder_pairs_by_name_and_splits(tmp_path):
    root = make_volume_dataset(tmp_path / "vol", num_volumes=5, shape=(16, 16, 16), kind="blobs")
    assert is_volume_folder(root)  # images/ + masks/
    (root / "masks").rename(root / "labels")
    (root / "images" / "._tubes_000.nii.gz").write_bytes(b"macOS resource fork")  # ignored
    assert is_volume_folder(root)
    lists = volume_folder_datalist(root, val_fraction=0.2, seed=0)
    assert [len(lists["training"]), len(lists["validation"])] == [4, 1]
    for item in lists["training"] + lists["validation"]:
        assert Path(item["image"]).name == Path(item["label"]).name and Path(item["image"]).is_absolute()
    assert load_volume_datalist(root, "validation") == lists["validation"]
    report = check_volume_datalist(root, num_classes=2, log=False)
    assert report.counts == {"training": 4, "validation": 1}


def test_two_dimensional_folders_are_not_volume_folders(tmp_path):
    for index in range(2):  # 2-D RGB slices stored as NIfTI (x, y, 3): the 2-D reader's business
        pair(tmp_path / "slices", f"s{index}", image_array=image(index, (32, 32, 3)), label_array=label((32, 32, 3)))
    assert not is_volume_folder(tmp_path / "slices")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    assert not is_volume_folder(tmp_path / "empty") and not is_volume_folder(tmp_path / "nothing")


def test_unpaired_volume_is_named(tmp_path):
    pair(tmp_path, "a")
    save(tmp_path / "images" / "b.nii.gz", image())
    with pytest.raises(DataCheckError, match=r"b\.nii\.gz: image has no mask"):
        volume_folder_datalist(tmp_path)


# -- the checks -------------------------------------------------------------------------------------------------------
def test_a_clean_dataset_passes_with_a_report(tmp_path):
    root = make_volume_dataset(tmp_path / "vol", num_volumes=3, shape=(16, 20, 24), kind="blobs",
                               spacing=(0.8, 0.8, 1.5))
    lists = volume_folder_datalist(root, val_fraction=0.34)
    report = check_volume_items(lists, num_classes=2)
    text = report.text()
    assert report.counts == {"training": 2, "validation": 1} and "problems: none" in text
    assert "shapes (x y z): 16-16 x 20-20 x 24-24" in text and "spacing (mm): 0.8-0.8 x 0.8-0.8 x 1.5-1.5" in text
    assert "median 0.8 x 0.8 x 1.5" in text and "image dtypes: float32 ×3" in text
    assert "label dtypes: uint8 ×3" in text and "classes per label: {0,1,2}" in text and "MiB to refine" in text


def test_shape_mismatch_names_the_label(tmp_path):
    item = pair(tmp_path, image_array=image(), label_array=label((16, 20, 17)))
    message = refused([item])
    assert message.startswith(item["label"]) and "label shape 16x20x17 differs from its image" in message
    assert item["image"] in message and "ResampleToMatchd" in message


@pytest.mark.parametrize("label_geometry, what", [
    ({"spacing": (1.0, 1.0, 2.0)}, "spacing (1, 1, 2) vs the image's (1, 1, 1)"),
    ({"origin": (0.0, 5.0, 0.0)}, "origin (0, 5, 0) vs (0, 0, 0)"),
])
def test_affine_mismatch_says_what_differs(tmp_path, label_geometry, what):
    item = pair(tmp_path)
    save(Path(item["label"]), label(), **label_geometry)
    message = refused([item])
    assert message.startswith(f"{item['label']}: label affine differs from its image") and what in message
    save(Path(item["label"]), label(), origin=(0.0, 0.0, 0.0005))  # within the tolerance
    check_volume_items([item])


def test_four_d_images_need_declared_channels(tmp_path):
    item = pair(tmp_path, image_array=np.stack([image(0), image(1)], axis=-1), label_array=label())
    message = refused([item])
    assert message.startswith(item["image"]) and "2 channels" in message and "image_channels=2" in message
    report = check_volume_items([item], channels=2)
    assert "channels: 2 ×1" in report.text()
    assert "but the dataset declares 3" in refused([item], channels=3)
    plain = pair(tmp_path, "plain")
    assert refused([plain], channels=2).startswith(f"{plain['image']}: 1 image channel(s)")


def test_label_values_outside_the_classes_are_named(tmp_path):
    item = pair(tmp_path, label_array=label(codes=(1, 2)))
    message = refused([item], num_classes=1)
    assert message.startswith(item["label"]) and "label values 0, 1, 2; 2 outside the declared classes 0..1" in message
    assert "num_classes" in message
    check_volume_items([item], num_classes=2)
    save(Path(item["label"]), label(codes=(1, 5)))
    assert "5 outside the declared classes 0..2" in refused([item], num_classes=2)


def test_binary_labels_stored_as_0_255_are_noted(tmp_path):
    item = pair(tmp_path, label_array=label(codes=(255,)))
    report = check_volume_items([item])
    assert any("0/v" in note and f"{item['label']} (0/255)" in note for note in report.notes)


def test_fractional_labels_are_refused_and_integral_floats_noted(tmp_path):
    item = pair(tmp_path, label_array=label(codes=(1.0, 2.0), dtype=np.float32))
    report = check_volume_items([item], num_classes=2)
    assert any("float labels with integral values" in note and item["label"] in note for note in report.notes)
    assert "label dtypes: float32" in report.text()
    save(Path(item["label"]), label(codes=(1.0, 1.5), dtype=np.float32))
    message = refused([item], num_classes=2)
    assert message.startswith(item["label"]) and "fractional label values (1.5)" in message


def test_empty_volumes_are_refused_and_empty_labels_noted(tmp_path):
    empty = pair(tmp_path, "empty", image_array=np.zeros((16, 0, 16), np.float32),
                 label_array=np.zeros((16, 0, 16), np.uint8))
    message = refused([empty])
    assert message.startswith(empty["image"]) and "empty image" in message and "zero-size" in message
    background = pair(tmp_path, "background", label_array=np.zeros(SHAPE, np.uint8))
    report = check_volume_items([background])
    assert any("all-zero labels ×1" in n and "not an error" in n and background["label"] in n for n in report.notes)
    assert "classes per label: {0} ×1" in report.text()


def test_two_dimensional_images_mixed_in_are_refused(tmp_path):
    root = tmp_path / "mixed"
    pair(root, "volume")
    for folder in ("images", "labels"):
        itk.imwrite(itk.image_from_array(np.zeros((20, 16), np.uint8)), str(root / folder / "slide.png"))
    lists = volume_folder_datalist(root, val_fraction=0)
    message = refused(lists)
    assert f"{root / 'images' / 'slide.png'}: a 2-D .png image in a volume dataset" in message
    thin = pair(tmp_path, "thin", image_array=image(shape=(32, 32, 1)), label_array=label((32, 32, 1)))
    message = refused([thin])
    assert message.startswith(f"{thin['image']}: a 2-D image (shape 32x32x1) in a volume dataset")


def test_truncated_gzip_is_caught_for_images_and_labels(tmp_path):
    bad_image = pair(tmp_path, "bad_image", image_array=image(shape=(24, 24, 24)))
    truncate(bad_image["image"])
    assert nib.load(bad_image["image"]).shape == (24, 24, 24)  # the header still reads
    message = refused([bad_image])
    assert message.startswith(bad_image["image"]) and "unreadable voxel data" in message
    bad_label = pair(tmp_path, "bad_label", label_array=np.random.RandomState(0).randint(0, 2, SHAPE, np.uint8))
    truncate(bad_label["label"])
    assert refused([bad_label]).startswith(f"{bad_label['label']}: unreadable")


def test_every_problem_gets_its_own_line(tmp_path):
    a = pair(tmp_path, "a", label_array=label((16, 16, 16)))
    b = pair(tmp_path, "b", label_array=label(codes=(1, 3)))
    lines = refused([a, b]).splitlines()
    assert lines[0].startswith("2 problems") and lines[1].strip().startswith(a["label"])
    assert lines[2].strip().startswith(b["label"])


def test_anisotropic_volumes_are_noted_not_refused(tmp_path):
    item = pair(tmp_path, spacing=(0.5, 0.5, 2.5))
    report = check_volume_items([item])
    assert any("anisotropic" in n and item["image"] in n and "(0.5, 0.5, 2.5)" in n for n in report.notes)


def test_a_volume_too_large_for_memory_is_refused(tmp_path, monkeypatch):
    item = pair(tmp_path)
    monkeypatch.setattr(inputs_module, "available_memory", lambda: 100_000)
    message = refused([item])
    assert message.startswith(f"{item['image']}: a 16x20x18 input needs about") and "GiB" in message
    check_volume_items([item], memory=False)


def test_nrrd_and_metaimage_pairs_are_accepted(tmp_path):
    items = []
    for suffix in (".nrrd", ".mha"):
        for folder, array in (("images", image()), ("labels", label(codes=(1, 2)))):
            volume = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))  # ITK arrays are (z, y, x)
            volume.SetSpacing([0.9, 0.9, 1.2])
            (tmp_path / folder).mkdir(exist_ok=True)
            itk.imwrite(volume, str(tmp_path / folder / f"case_{suffix[1:]}{suffix}"))
        items.append({"image": str(tmp_path / "images" / f"case_{suffix[1:]}{suffix}"),
                      "label": str(tmp_path / "labels" / f"case_{suffix[1:]}{suffix}")})
    assert is_volume_folder(tmp_path)
    report = check_volume_items(items, num_classes=2)
    assert "shapes (x y z): 16-16 x 20-20 x 18-18" in report.text() and "spacing (mm): 0.9-0.9" in report.text()
    # an NRRD image with a NIfTI label on the same grid: ITK's LPS geometry compares as RAS
    nifti_label = save(tmp_path / "case_nifti.nii.gz", label(), spacing=(-0.9, -0.9, 1.2))
    check_volume_items([{"image": items[0]["image"], "label": str(nifti_label)}])


# -- prepare msd ------------------------------------------------------------------------------------------------------
def fake_decathlon(root: Path, cases: int = 5, channels: int = 1) -> Path:
    """A Decathlon task folder: ``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs`` (and a ``._`` entry)."""
    training, test = [], []
    for index in range(cases):
        array = image(index) if channels == 1 else np.stack([image(index + c) for c in range(channels)], -1)
        save(root / "imagesTr" / f"task_{index:03d}.nii.gz", array)
        save(root / "labelsTr" / f"task_{index:03d}.nii.gz", label(codes=(1, 2)))
        name = f"task_{index:03d}.nii.gz"
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    save(root / "imagesTs" / "task_100.nii.gz", image(9) if channels == 1 else np.stack([image(9)] * channels, -1))
    test.append("./imagesTs/task_100.nii.gz")
    training.append({"image": "./imagesTr/._task_000.nii.gz", "label": "./labelsTr/._task_000.nii.gz"})
    modality = {str(c): name for c, name in enumerate(["T1", "T2", "FLAIR"][:channels])}
    content = {"name": "Fake", "modality": modality, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
               "numTraining": cases, "numTest": 1, "training": training, "test": test}
    (root / "dataset.json").write_text(json.dumps(content))
    return root


def test_prepare_msd_writes_a_datalist_with_labels_and_modality(tmp_path, capsys):
    root = fake_decathlon(tmp_path / "Task99_Fake")
    out = tmp_path / "out" / "fake.json"
    report = prepare("msd", tmp_path, out, val_fraction=0.2)  # a folder above the task folder works too
    assert report.summary == "msd: 5 training cases, 1 test, modality T1 (1 channel), labels 1 Anterior, 2 Posterior"
    assert report.summary in capsys.readouterr().out
    content = json.loads(out.read_text())
    assert content["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert content["modality"] == {"0": "T1"} and content["num_classes"] == 2 and content["image_channels"] == 1
    assert [len(content[k]) for k in ("training", "validation", "test")] == [4, 1, 1]
    assert content["test"] == [{"image": str(root / "imagesTs" / "task_100.nii.gz")}]
    assert all("._" not in item["image"] for item in content["training"])
    assert any("'._*' entries" in note for note in report.notes)
    assert msd_properties(out)["labels"] == content["labels"]
    assert load_volume_datalist(out, "test") == content["test"]
    check_volume_datalist(out, num_classes=2, log=False)


def test_prepare_msd_multichannel_task_declares_its_channels(tmp_path):
    fake_decathlon(tmp_path / "Task01", cases=3, channels=2)
    report = prepare_msd(tmp_path / "Task01", tmp_path / "t1.json", quiet=True)
    assert "modality T1, T2 (2 channels)" in report.summary and "channels: 2 ×4" in report.text()
    assert json.loads((tmp_path / "t1.json").read_text())["image_channels"] == 2


def test_prepare_msd_errors_name_the_file(tmp_path):
    with pytest.raises(DataCheckError, match=r"dataset\.json: not found"):
        prepare("msd", tmp_path, tmp_path / "x.json")
    root = fake_decathlon(tmp_path / "Task02", cases=2)
    (root / "labelsTr" / "task_001.nii.gz").unlink()
    with pytest.raises(DataCheckError, match=r"labelsTr/task_001\.nii\.gz: file not found \(listed in .*dataset"):
        prepare("msd", root, tmp_path / "x.json")
    save(root / "labelsTr" / "task_001.nii.gz", label(codes=(3,)))
    with pytest.raises(DataCheckError, match=r"labelsTr/task_001\.nii\.gz: label values 0, 3; 3 outside"):
        prepare("msd", root, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


# -- the shared Decathlon hippocampus cases ---------------------------------------------------------------------------
@pytest.mark.skipif(not (HIPPOCAMPUS / "dataset.json").is_file(), reason="shared hippocampus data absent")
def test_shared_hippocampus_prepares_and_passes_the_checks(tmp_path):
    out = tmp_path / "hippocampus.json"
    report = prepare("msd", HIPPOCAMPUS, out, quiet=True)
    assert report.summary == ("msd: 40 training cases, 0 test, modality MRI (1 channel), labels 1 Anterior, "
                              "2 Posterior")
    content = json.loads(out.read_text())
    assert len(content["training"]) + len(content["validation"]) == 40 and content["test"] == []
    assert content["num_classes"] == 2 and len(content["labels"]) == 3
    text = report.text()
    assert "classes per label: {0,1,2} ×40" in text and "problems: none" in text
    image_dtypes = text.split("image dtypes: ")[1].splitlines()[0]
    assert "float32" in image_dtypes and "uint8" in image_dtypes  # mixed image dtypes are fine
    float_labels = [n for n in report.notes if "float labels with integral values" in n]
    assert ("float32" in text.split("label dtypes: ")[1].splitlines()[0]) == bool(float_labels)


def test_hippocampus_with_a_fractional_label_is_refused(tmp_path):
    if not (HIPPOCAMPUS / "dataset.json").is_file():
        pytest.skip("shared hippocampus data absent")
    content = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    for item in content["training"]:  # absolute paths into the shared folder, one label replaced
        item.update({k: str((HIPPOCAMPUS / v).resolve()) for k, v in item.items()})
    original = nib.load(content["training"][0]["label"])
    values = np.asanyarray(original.dataobj).astype(np.float32)
    values[values == 2] = 1.5
    replaced = save(tmp_path / "labelsTr" / "resampled.nii.gz", values)
    nib.save(nib.Nifti1Image(values, original.affine), str(replaced))
    content["training"][0]["label"] = str(replaced)
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(DataCheckError, match=r"resampled\.nii\.gz: fractional label values \(1\.5\)"):
        prepare("msd", tmp_path, tmp_path / "h.json", quiet=True)
