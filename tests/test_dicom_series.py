"""CT/MR DICOM series as volumes (issue 21, item 1): grouping, slice order from the positions, rescaling, the RAS
grid, the checks naming series and instance, and the roughly anonymised real CT series."""

from __future__ import annotations

import json
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dicom_support import echo_volume_run
from fanet_monai.dicom.samples import make_ct_series, save
from fanet_monai.dicom.series import SeriesError, find_series, read_series

CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct_dicom_series"


def _volume(shape=(12, 10, 6), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, shape).astype(np.int16)


def _write(folder: Path, datasets, shuffle=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(len(datasets)))
    if shuffle:
        random.Random(0).shuffle(order)
    for i in order:
        save(datasets[i], folder / f"{datasets[i].SOPInstanceUID}.dcm")
    return folder


def _only(folder: Path):
    series = find_series(folder)
    assert len(series) == 1
    return read_series(next(iter(series.values())))


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1)])  # axial, sagittal
def test_a_shuffled_series_becomes_the_volume_on_its_grid(tmp_path, orientation):
    hu = _volume()
    volume = _only(_write(tmp_path / "s", make_ct_series(hu, spacing=(0.7, 0.9, 2.5), orientation=orientation)))
    assert np.array_equal(volume.array, hu.astype(np.float32))  # slice order from the positions, HU rescaled
    assert volume.spacing == pytest.approx((0.7, 0.9, 2.5))  # Z from the positions, not Slice Thickness (3.75)
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    lps = np.array([-100.0, -120.0, 50.0]) + 3 * 2.5 * np.cross(row, col) + 2 * 0.7 * row + 5 * 0.9 * col
    ras = np.array([-lps[0], -lps[1], lps[2]])
    assert volume.affine[:3, :3] @ [2, 5, 3] + volume.affine[:3, 3] == pytest.approx(ras)  # voxel (2, 5, 3)
    assert [int(ds.InstanceNumber) for ds in volume.datasets] == list(range(1, 7))


def test_series_are_grouped_and_each_checked_on_its_own(tmp_path):
    good = make_ct_series(_volume(seed=1))
    missing = make_ct_series(_volume(seed=2))
    del missing[3]
    _write(tmp_path, good + missing)
    series = find_series(tmp_path)
    assert len(series) == 2
    volumes, errors = [], []
    for instances in series.values():
        try:
            volumes.append(read_series(instances))
        except SeriesError as error:
            errors.append(str(error))
    assert len(volumes) == 1 and len(errors) == 1
    assert f"series {missing[0].SeriesInstanceUID}" in errors[0] and "missing slice" in errors[0]
    assert f"after {missing[2].SOPInstanceUID}.dcm" in errors[0] and missing[3 + 0].SOPInstanceUID in errors[0]


def _fails(folder: Path, match: str) -> str:
    with pytest.raises(SeriesError, match=match) as info:
        _only(folder)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_series_are_refused_naming_series_and_instance(tmp_path):
    localizer = make_ct_series(_volume(seed=3))
    localizer[2].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    message = _fails(_write(tmp_path / "loc", localizer), "a localizer")
    assert localizer[2].SOPInstanceUID in message

    mixed = make_ct_series(_volume(seed=4))
    mixed[4].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    assert mixed[4].SOPInstanceUID in _fails(_write(tmp_path / "mixed", mixed), "orientation .* differs")

    uneven = make_ct_series(_volume(seed=5))
    uneven[3].ImagePositionPatient = [-100.0, -120.0, 50.0 + 3 * 2.0 + 0.3]
    _fails(_write(tmp_path / "uneven", uneven), "unequal slice spacing")

    tilted = make_ct_series(_volume(seed=6))
    for k, ds in enumerate(tilted):
        ds.ImagePositionPatient = [-100.0, -120.0 + 0.5 * k, 50.0 + 2.0 * k]  # each slice shifted along y
    _fails(_write(tmp_path / "tilt", tilted), "gantry tilt: .* refused, not resampled")

    single = make_ct_series(_volume(shape=(12, 10, 1), seed=7))
    _fails(_write(tmp_path / "one", single), "a series of one slice")

    seg_like = make_ct_series(_volume(seed=8))
    seg_like[1].Modality = "SEG"
    _fails(_write(tmp_path / "seg", seg_like), "Segmentation \\(SEG\\) object, not an image to segment")


@pytest.mark.skipif(not CT.is_dir(), reason="needs ../shared/data/ct_dicom_series")
def test_the_real_ct_series_is_repaired_and_lies_on_its_reference_labels_grid():
    series = find_series(CT / "dicom")
    assert len(series) == 1
    volume = read_series(next(iter(series.values())))
    assert volume.array.shape == (512, 512, 20) and volume.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert volume.array.min() == -1024 and volume.array.max() > 1000  # Hounsfield units, JPEG 2000 decoded
    assert "SeriesInstanceUID generated (empty in the files)" in volume.notes
    assert "SOPInstanceUID taken from the file meta information" in volume.notes
    assert all(ds.SOPInstanceUID and ds.StudyInstanceUID for ds in volume.datasets)
    again = read_series(next(iter(find_series(CT / "dicom").values())))
    assert again.series_uid == volume.series_uid  # generated deterministically: a re-run finds the same series
    reference = nib.as_closest_canonical(nib.load(CT / "reference_labels.nii.gz"))
    ours = nib.as_closest_canonical(nib.Nifti1Image(volume.array, volume.affine))
    assert ours.shape == reference.shape and np.allclose(ours.affine, reference.affine, atol=1e-3)


def test_one_seg_per_series_with_a_segment_per_class_reads_back_voxel_for_voxel(tmp_path):
    import highdicom as hd
    from dicom_support import dciodvfy_errors
    from test_dicom import MODEL

    from fanet_monai.dicom.seg import SegSettings
    from fanet_monai.dicom.series_seg import build_series_segmentation

    sagittal = make_ct_series(_volume(shape=(16, 14, 8)), orientation=(0, 1, 0, 0, 0, -1))
    volume = _only(_write(tmp_path / "s", sagittal))
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[2:9, 3:10, 1:4] = 1
    labels[10:14, 5:12, 5:7] = 2  # slices 0 and 4 and 7 stay empty: not stored
    settings = SegSettings(label_names={"1": "Anterior", "2": "Posterior"})
    seg = build_series_segmentation(volume, labels, 2, MODEL, settings)
    seg.save_as(tmp_path / "seg.dcm")
    if Path("/usr/bin/dciodvfy").exists():
        assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    back = hd.seg.segread(tmp_path / "seg.dcm")
    assert [s.SegmentLabel for s in back.SegmentSequence] == ["Anterior", "Posterior"]
    assert back.FrameOfReferenceUID == volume.datasets[0].FrameOfReferenceUID
    assert int(back.NumberOfFrames) == 3 + 2  # frames with foreground only, one per segment and slice
    referenced = {i.ReferencedSOPInstanceUID for i in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in volume.datasets}
    sop_uids = [ds.SOPInstanceUID for ds in volume.datasets]
    stack = back.get_pixels_by_source_instance(source_sop_instance_uids=sop_uids, combine_segments=True,
                                               skip_overlap_checks=True)  # (Z, rows, columns)
    assert np.array_equal(np.transpose(stack, (2, 1, 0)), labels)
    with pytest.raises(ValueError, match="not on the series' grid"):
        build_series_segmentation(volume, labels[:-1], 2, MODEL, settings)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_an_enhanced_multi_frame_series_is_the_same_volume_and_gets_a_seg_on_its_frames(tmp_path, modality):
    """A Legacy Converted Enhanced CT/MR instance (frames stored out of slice order, geometry and rescaling in the
    functional groups) reads as the same volume as its single-frame series; its SEG pairs each frame with the
    source frame it segments, dciodvfy clean, and its volume report is valid."""
    import highdicom as hd
    from dicom_support import dciodvfy_errors
    from test_dicom import MODEL

    from fanet_monai.dicom.samples import make_enhanced_series
    from fanet_monai.dicom.seg import SegSettings
    from fanet_monai.dicom.series_seg import build_series_segmentation
    from fanet_monai.dicom.sr import build_volume_report, segment_volumes

    single = make_ct_series(_volume(shape=(16, 14, 8), seed=4), spacing=(0.8, 0.7, 2.0),
                            orientation=(0, 1, 0, 0, 0, -1))
    reference = _only(_write(tmp_path / "single", single))
    enhanced = make_enhanced_series(single, modality)
    assert int(enhanced.NumberOfFrames) == 8 and enhanced.Modality == modality
    volume = _only(_write(tmp_path / "enhanced", [enhanced]))
    assert np.array_equal(volume.array, reference.array) and np.allclose(volume.affine, reference.affine)
    assert len(volume.datasets) == 1 and sorted(volume.frames) == list(range(8))

    labels = np.zeros(volume.array.shape, np.uint8)
    labels[2:9, 3:10, 1:4] = 1
    settings = SegSettings(label_names={"1": "Lesion"})
    seg = build_series_segmentation(volume, labels, 1, MODEL, settings)
    seg.save_as(tmp_path / "seg.dcm")
    report = build_volume_report(volume, seg, segment_volumes(volume, labels, 1, settings), MODEL, settings)
    report.save_as(tmp_path / "sr.dcm")
    if Path("/usr/bin/dciodvfy").exists():
        assert dciodvfy_errors(tmp_path / "seg.dcm") == [] and dciodvfy_errors(tmp_path / "sr.dcm") == []
    back = hd.seg.segread(tmp_path / "seg.dcm")
    assert int(back.NumberOfFrames) == 3  # slices 1-3 hold the label
    by_frame = back.get_pixels_by_source_frame(
        source_sop_instance_uid=enhanced.SOPInstanceUID, source_frame_numbers=list(range(1, 9)),
        combine_segments=True, skip_overlap_checks=True, assert_missing_frames_are_empty=True)  # (frames, rows, cols)
    for slice_index, frame in enumerate(volume.frames):
        assert np.array_equal(by_frame[frame].T, labels[:, :, slice_index]), (slice_index, frame)

    for ds in single[:3]:  # the same series UID: one series of mixed instance types
        ds.SeriesInstanceUID = enhanced.SeriesInstanceUID
    _fails(_write(tmp_path / "mixed", [*single[:3], enhanced]), "multi-frame instance mixed with other instances")


@pytest.mark.slow
def test_dicom_infer_with_a_volume_run_writes_one_seg_per_series_equal_to_fanet_infer(tmp_path, capsys):
    """A 3-D run (trained on NIfTI volumes) given DICOM series: each valid series becomes one SEG holding exactly
    the voxels ``fanet infer`` writes for the series exported to NIfTI; a broken series is reported, the others
    go on."""
    import highdicom as hd

    from fanet_monai.cli import run
    from fanet_monai.data import make_volume_dataset

    data = make_volume_dataset(tmp_path / "train", num_volumes=4, shape=(16, 16, 12), kind="blobs", num_classes=2,
                               seed=3)
    root = echo_volume_run(tmp_path, data)
    dicom = tmp_path / "dicom"
    hu = [(np.asarray(nib.load(p).dataobj) * 400 - 200).astype(np.int16)
          for p in sorted((data / "images").iterdir())[:2]]
    good = make_ct_series(hu[0], spacing=(1.0, 1.0, 1.0))
    broken = make_ct_series(hu[1], spacing=(1.0, 1.0, 1.0))
    del broken[5]
    _write(dicom / "a", good)
    _write(dicom / "b", broken)
    out = tmp_path / "segs"
    assert run(["dicom_infer", str(dicom), str(out), "--bundle_root", str(root), "--num_workers", "0"]) == 3
    printed = capsys.readouterr()
    assert "missing slice" in printed.out + printed.err
    segs = sorted(out.glob("*.seg.dcm"))
    assert [p.name for p in segs] == [f"{good[0].SeriesInstanceUID}.seg.dcm"]
    # fanet infer on the same series exported to NIfTI
    volume = _only(dicom / "a")
    images = tmp_path / "nifti"
    images.mkdir()
    nib.save(nib.Nifti1Image(volume.array, volume.affine), images / "series.nii.gz")
    assert run(["infer", str(images), str(tmp_path / "masks"), "--bundle_root", str(root), "--num_workers", "0"]) == 0
    expected = np.asarray(nib.load(tmp_path / "masks" / "series.nii.gz").dataobj)
    assert 0.05 < (expected == 1).mean() < 0.95  # a mask with a shape, not a constant
    back = hd.seg.segread(segs[0])
    assert [s.SegmentLabel for s in back.SegmentSequence] == ["Core", "Rim"]
    uids = [ds.SOPInstanceUID for ds in volume.datasets]
    stack = back.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               skip_overlap_checks=True)
    assert np.array_equal(np.transpose(stack, (2, 1, 0)), expected)
    report = json.loads((out / f"{good[0].SeriesInstanceUID}.volumes.json").read_text())
    voxel_ml = float(np.prod(volume.spacing)) / 1000
    assert [r["volume_ml"] for r in report["segments"]] == [
        pytest.approx(float((expected == k).sum()) * voxel_ml) for k in (1, 2)]
    sr = hd.sr.srread(out / f"{good[0].SeriesInstanceUID}.sr.dcm")
    assert len(sr.content.get_volumetric_roi_measurement_groups()) == 2


def test_a_volume_report_per_series_gives_each_segment_in_millilitres(tmp_path):
    import highdicom as hd
    from dicom_support import dciodvfy_errors
    from test_dicom import MODEL

    from fanet_monai.dicom.seg import SegSettings
    from fanet_monai.dicom.series_seg import build_series_segmentation
    from fanet_monai.dicom.sr import build_volume_report, segment_volumes

    volume = _only(_write(tmp_path / "s", make_ct_series(_volume(shape=(16, 14, 8)), spacing=(0.5, 0.8, 2.5))))
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[2:9, 3:10, 1:4] = 1  # 7 * 7 * 3 = 147 voxels of 0.5 * 0.8 * 2.5 = 1 mm³: 0.147 mL
    labels[10:14, 5:12, 5:7] = 2  # 4 * 7 * 2 = 56 voxels: 0.056 mL
    settings = SegSettings(label_names={"1": "Anterior", "2": "Posterior"})
    seg = build_series_segmentation(volume, labels, 2, MODEL, settings)
    volumes = segment_volumes(volume, labels, 2, settings)
    assert [(r["label"], r["voxels"], r["volume_ml"]) for r in volumes] == [("Anterior", 147, 0.147),
                                                                            ("Posterior", 56, 0.056)]
    sr = build_volume_report(volume, seg, volumes, MODEL, settings)
    sr.save_as(tmp_path / "sr.dcm")
    if Path("/usr/bin/dciodvfy").exists():
        assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    back = hd.sr.srread(tmp_path / "sr.dcm")
    groups = back.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    found = {g.referenced_segment.referenced_segment_numbers[0]: g.get_measurements()[0] for g in groups}
    assert found[1].value == pytest.approx(0.147) and found[2].value == pytest.approx(0.056)
    assert found[1].unit.value == "mL" and found[1].name.meaning == "Volume"
    assert all(g.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID for g in groups)


def test_a_truncated_instance_or_a_series_too_large_for_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    datasets = make_ct_series(_volume(seed=9))
    folder = _write(tmp_path / "cut", datasets)
    victim = folder / f"{datasets[3].SOPInstanceUID}.dcm"
    victim.write_bytes(victim.read_bytes()[:-100])  # cut inside the pixel data
    message = _fails(folder, "series .*")
    assert datasets[3].SOPInstanceUID in message and ("cut" in message or "truncat" in message or "short" in message)

    import fanet_monai.data.inputs as inputs

    monkeypatch.setattr(inputs, "available_memory", lambda: 10_000)  # bytes
    decoded = []
    monkeypatch.setattr("fanet_monai.dicom.series.decode_frame", lambda ds, *frame: decoded.append(ds) or None)
    message = _fails(_write(tmp_path / "big", make_ct_series(_volume(seed=10))), "needs about .* GiB to refine")
    assert message.startswith("series ") and decoded == []


@pytest.mark.slow
@pytest.mark.skipif(not CT.is_dir(), reason="needs ../shared/data/ct_dicom_series")
def test_the_real_ct_series_gets_a_seg_and_a_volume_report(tmp_path):
    """The real 20-slice CT (JPEG 2000, UIDs stripped): repaired from the file meta, segmented by a volume run, one
    SEG referencing all 20 instances on the series' frame of reference and a report, both dciodvfy clean."""
    import highdicom as hd
    from dicom_support import dciodvfy_errors

    from fanet_monai.cli import run
    from fanet_monai.data import make_volume_dataset

    root = echo_volume_run(tmp_path, make_volume_dataset(tmp_path / "train", num_volumes=4, shape=(16, 16, 12),
                                                         kind="blobs", num_classes=2, seed=3))
    out = tmp_path / "segs"
    assert run(["dicom_infer", str(CT / "dicom"), str(out), "--bundle_root", str(root), "--num_workers", "0",
                "--patch_size", "[128,128,20]", "--target_spacing", "[0.9765625,0.9765625,2.0]"]) == 0
    segs, reports = sorted(out.glob("*.seg.dcm")), sorted(out.glob("*.sr.dcm"))
    assert len(segs) == 1 and len(reports) == 1
    if Path("/usr/bin/dciodvfy").exists():
        assert dciodvfy_errors(segs[0]) == [] and dciodvfy_errors(reports[0]) == []
    seg = hd.seg.segread(segs[0])
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 20
    volume = read_series(next(iter(find_series(CT / "dicom").values())))
    assert seg.FrameOfReferenceUID == volume.datasets[0].FrameOfReferenceUID
    stack = seg.get_pixels_by_source_instance(source_sop_instance_uids=[d.SOPInstanceUID for d in volume.datasets],
                                              combine_segments=True, skip_overlap_checks=True)
    assert stack.shape == (20, 512, 512) and 0.01 < (stack == 1).mean() < 0.99
