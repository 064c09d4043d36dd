"""``fanet infer --where_to_look`` (issue 22, item 3): a heat-map PNG next to each 2-D mask, a float32 map in the
mask's format next to each volume mask, on the mask's grid; the masks are the same as without the map; bad values
are refused before anything runs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from dicom_support import INFER, smooth_rgb, tiny_volume_run
from fanet_monai.cli import FanetCLI, run
from fanet_monai.data import make_volume_dataset


@pytest.mark.slow
def test_infer_writes_a_heat_map_next_to_each_2d_mask(tmp_path, tiny_bundle_root):
    images = tmp_path / "images"
    images.mkdir()
    for name, (h, w, seed) in {"a": (64, 64, 1), "b": (50, 62, 2)}.items():
        Image.fromarray(smooth_rgb(h, w, seed)).save(images / f"{name}.png")
    plain, mapped = tmp_path / "plain", tmp_path / "mapped"
    FanetCLI().infer(str(images), str(plain), bundle_root=str(tiny_bundle_root), **INFER)
    FanetCLI().infer(str(images), str(mapped), bundle_root=str(tiny_bundle_root), where_to_look="starts", **INFER)
    for name, size in (("a", (64, 64)), ("b", (50, 62))):
        mask = np.asarray(Image.open(mapped / f"{name}.png"))
        assert np.array_equal(mask, np.asarray(Image.open(plain / f"{name}.png")))  # the map changes no mask
        heat = np.asarray(Image.open(mapped / f"{name}_where_to_look.png"))
        assert heat.shape == (*size, 3) and heat.dtype == np.uint8 and mask.shape == size
        assert heat.std() > 0  # some pixels to look at, most not
    assert not list(plain.glob("*_where_to_look*"))


@pytest.mark.slow
def test_infer_writes_a_float_map_next_to_each_volume_mask(tmp_path):
    data, root = tiny_volume_run(tmp_path, num_passes=3)
    out = tmp_path / "masks"
    assert run(["infer", str(data / "images"), str(out), "--bundle_root", str(root), "--num_workers", "0",
                "--where_to_look", "True"]) == 0
    for source in sorted((data / "images").iterdir()):
        stem = source.name[: -len(".nii.gz")]
        mask, look = nib.load(out / source.name), nib.load(out / f"{stem}_where_to_look.nii.gz")
        assert look.shape == mask.shape == nib.load(source).shape
        assert np.allclose(look.affine, mask.affine)
        values = np.asarray(look.dataobj)
        assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1


def test_a_bad_where_to_look_value_is_refused_before_anything_runs(capsys):
    assert run(["infer", "in", "out", "--where_to_look", "everywhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--where_to_look 'everywhere'" in err[0] and "instability" in err[0]


@pytest.mark.slow
def test_dicom_infer_adds_a_fractional_review_seg_beside_each_seg(tmp_path, tiny_bundle_root):
    import highdicom as hd

    from dicom_support import DCIODVFY, dciodvfy_errors
    from fanet_monai.dicom.pipeline import dicom_infer
    from fanet_monai.dicom.samples import make_source, save
    from fanet_monai.dicom.seg import REVIEW_LABEL

    source = make_source(smooth_rgb(50, 62, 4), "ES")
    path = save(source, tmp_path / "es.dcm")
    plain = dicom_infer([path], tmp_path / "plain", str(tiny_bundle_root), **INFER)
    mapped = dicom_infer([path], tmp_path / "mapped", str(tiny_bundle_root), where_to_look="starts", **INFER)
    assert plain.done == mapped.done == 1
    uid = source.SOPInstanceUID
    assert sorted(p.name for p in (tmp_path / "mapped").iterdir()) == [f"{uid}.review.seg.dcm", f"{uid}.seg.dcm"]
    same = [hd.seg.segread(tmp_path / folder / f"{uid}.seg.dcm").pixel_array for folder in ("plain", "mapped")]
    assert np.array_equal(*same)  # the mask SEG does not change
    review = hd.seg.segread(tmp_path / "mapped" / f"{uid}.review.seg.dcm")
    assert review.SegmentationType == "FRACTIONAL" and review.SegmentSequence[0].SegmentLabel == REVIEW_LABEL
    assert review.SeriesInstanceUID != hd.seg.segread(tmp_path / "mapped" / f"{uid}.seg.dcm").SeriesInstanceUID
    values = review.get_pixels_by_source_instance([uid], combine_segments=False)[0, ..., 0]
    assert values.shape == (50, 62) and values.min() >= 0 and values.max() <= 1 and values.max() > 0
    if DCIODVFY:
        assert dciodvfy_errors(tmp_path / "mapped" / f"{uid}.review.seg.dcm") == []


@pytest.mark.slow
def test_a_series_gets_a_fractional_review_seg_on_its_grid(tmp_path):
    import highdicom as hd

    from dicom_support import DCIODVFY, dciodvfy_errors, echo_volume_run
    from fanet_monai.dicom.samples import make_ct_series, save

    data = make_volume_dataset(tmp_path / "train", num_volumes=4, shape=(16, 16, 12), kind="blobs", num_classes=2,
                               seed=3)
    root = echo_volume_run(tmp_path, data)
    hu = (np.asarray(nib.load(sorted((data / "images").iterdir())[0]).dataobj) * 400 - 200).astype(np.int16)
    series = make_ct_series(hu, spacing=(1.0, 1.0, 1.0))
    (tmp_path / "dicom").mkdir()
    for ds in series:
        save(ds, tmp_path / "dicom" / f"{ds.SOPInstanceUID}.dcm")
    out = tmp_path / "segs"
    assert run(["dicom_infer", str(tmp_path / "dicom"), str(out), "--bundle_root", str(root), "--num_workers", "0",
                "--where_to_look", "starts"]) == 0
    uid = series[0].SeriesInstanceUID
    review = hd.seg.segread(out / f"{uid}.review.seg.dcm")
    assert review.SegmentationType == "FRACTIONAL"
    stack = review.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in series], combine_segments=False,
                                                 assert_missing_frames_are_empty=True)[..., 0]
    assert stack.shape == (12, 16, 16) and stack.min() >= 0 and stack.max() <= 1
    if DCIODVFY:
        assert dciodvfy_errors(out / f"{uid}.review.seg.dcm") == []
