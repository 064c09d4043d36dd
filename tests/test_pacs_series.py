"""``fanet pacs`` at series level (issue 21, item 4) against a real Orthanc: CT series found by QIDO-RS, retrieved
whole by WADO-RS, one SEG + one volume report stored together by STOW-RS; a series still receiving instances waits
until it is stable; a broken series is reported and the others go on; re-runs store nothing new; a PACS that goes
away between inference and storing leaves nothing half-stored, and the next run completes a series that has only one
of the two."""

from __future__ import annotations

import time
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
import requests

from dicom_support import (DCIODVFY, DICOMWEB_PLUGIN, ORTHANC, ORTHANC_PASSWORD, ORTHANC_USER, OrthancServer,
                           dciodvfy_errors, echo_volume_run)
from fanet_monai.dicom.pacs import ENV_PASSWORD, ENV_TOKEN, ENV_USERNAME, PacsUnavailable, connect
from fanet_monai.dicom.pacs_series import PacsSeriesSegmenter, SeriesRef, SeriesStability
from fanet_monai.dicom.predictor import ModelIdentity
from fanet_monai.dicom.samples import make_ct_series, save
from fanet_monai.dicom.seg import SegSettings
from fanet_monai.dicom.series_pipeline import SeriesResult
from fanet_monai.dicom.seg import review_model
from fanet_monai.dicom.series_seg import build_series_review, build_series_segmentation, series_seg_sop_uid
from fanet_monai.dicom.sr import build_volume_report, segment_volumes

needs_orthanc = pytest.mark.skipif(
    ORTHANC is None or not DICOMWEB_PLUGIN.is_file(),
    reason="Orthanc or its DICOMweb plugin is not installed (.ci/run installs them, as root)")
CREDENTIALS = {"username": ORTHANC_USER, "password": ORTHANC_PASSWORD}
MODEL = ModelIdentity("fanet-monai", "0.1.0", "test", "0" * 64)
SETTINGS = SegSettings(label_names={"1": "Bright"})


def test_a_series_is_ready_once_its_instance_count_held_still_long_enough():
    now = [100.0]
    stability = SeriesStability(stable_for=30.0, clock=lambda: now[0])
    ref = SeriesRef("1.2", "1.2.3", "CT", 10)
    assert stability.wait(ref) == 30.0  # first seen
    now[0] += 20
    assert stability.wait(ref) == pytest.approx(10.0)
    grown = SeriesRef("1.2", "1.2.3", "CT", 12)
    assert stability.wait(grown) == 30.0  # still receiving: the clock starts again
    now[0] += 30
    assert stability.wait(grown) == 0.0
    assert SeriesStability(stable_for=0.0).wait(ref) == 0.0  # 0: every series as it is


def _hounsfield(seed: int, shape=(16, 14, 8)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = np.full(shape, -800, np.int16)
    x, y, z = rng.integers(3, 8, 3)
    volume[x:x + 6, y:y + 5, z - 2:z + 2] = 300  # a bright box: class 1
    return volume


def threshold_segment(volumes: dict) -> dict:
    """A stand-in for the bundle: class 1 where the volume is above 0 HU (the PACS logic under test, not a model)."""
    out = {}
    for uid, volume in volumes.items():
        labels = (volume.array > 0).astype(np.uint8)
        seg = build_series_segmentation(volume, labels, 1, MODEL, SETTINGS)
        measured = segment_volumes(volume, labels, 1, SETTINGS)
        out[uid] = SeriesResult(volume, seg, build_volume_report(volume, seg, measured, MODEL, SETTINGS), measured,
                                MODEL)
    return out


def _upload(server: OrthancServer, datasets, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for ds in datasets:
        server.upload(save(ds, folder / f"{ds.SOPInstanceUID}.dcm"))


def _instances(server: OrthancServer, modality: str) -> list[dict]:
    client = connect(server.dicomweb, CREDENTIALS)
    return client.search_for_instances(search_filters={"Modality": modality})


@needs_orthanc
def test_series_round_trip_waits_for_stable_series_and_stores_seg_and_report_once(orthanc, tmp_path):
    good = make_ct_series(_hounsfield(0), spacing=(0.8, 0.8, 2.0))
    broken = make_ct_series(_hounsfield(1))
    del broken[3]  # a missing slice
    _upload(orthanc, good[:5], tmp_path / "good")  # still arriving
    _upload(orthanc, broken, tmp_path / "broken")
    segmenter = PacsSeriesSegmenter(connect(orthanc.dicomweb, CREDENTIALS), MODEL, threshold_segment,
                                    stable_for=1.5, wait_for_stable=False)
    first = segmenter.run_once()  # both just seen: neither is stable yet
    assert first.done == 0 and first.failed == [] and _instances(orthanc, "SEG") == []
    _upload(orthanc, good[5:], tmp_path / "good")
    assert segmenter.run_once().done == 0  # the count changed: its clock starts again
    time.sleep(1.6)
    second = segmenter.run_once()
    assert second.done == 1 and len(second.failed) == 1
    assert broken[0].SeriesInstanceUID in second.failed[0] and "missing slice" in second.failed[0]
    assert segmenter.run_once().failed == []  # a refused series is reported once per session, not at every poll

    (seg_ref,) = _instances(orthanc, "SEG")
    (sr_ref,) = _instances(orthanc, "SR")
    client = connect(orthanc.dicomweb, CREDENTIALS)
    seg = client.retrieve_instance(seg_ref["0020000D"]["Value"][0], seg_ref["0020000E"]["Value"][0],
                                   seg_ref["00080018"]["Value"][0])
    assert seg.StudyInstanceUID == good[0].StudyInstanceUID and seg.FrameOfReferenceUID == good[0].FrameOfReferenceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in good}  # every instance, including the late ones
    seg.save_as(tmp_path / "stored.seg.dcm")
    if DCIODVFY:
        assert dciodvfy_errors(tmp_path / "stored.seg.dcm") == []
    expected = threshold_segment({good[0].SeriesInstanceUID: _read(tmp_path / "good")})[good[0].SeriesInstanceUID]
    back = hd.seg.segread(tmp_path / "stored.seg.dcm")
    uids = [ds.SOPInstanceUID for ds in expected.volume.datasets]
    stack = back.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               skip_overlap_checks=True)
    assert np.array_equal(np.transpose(stack, (2, 1, 0)), (expected.volume.array > 0).astype(np.uint8))
    assert sr_ref["00080018"]["Value"][0] == expected.report.SOPInstanceUID

    again = PacsSeriesSegmenter(connect(orthanc.dicomweb, CREDENTIALS), MODEL, threshold_segment, stable_for=0)
    rerun = again.run_once()  # a new session: the good series is done, the broken one is reported again
    assert rerun.done == 0 and len(rerun.failed) == 1
    assert len(_instances(orthanc, "SEG")) == 1 and len(_instances(orthanc, "SR")) == 1


def _read(folder: Path):
    from fanet_monai.dicom.series import find_series, read_series

    (instances,) = find_series(folder).values()
    return read_series(instances)


@needs_orthanc
def test_a_pacs_gone_before_storing_leaves_nothing_and_a_half_stored_series_is_completed(orthanc, tmp_path):
    series = make_ct_series(_hounsfield(2))
    _upload(orthanc, series, tmp_path / "series")

    def segment_then_outage(volumes: dict) -> dict:
        results = threshold_segment(volumes)
        orthanc.stop()  # the PACS goes away after inference, before STOW-RS
        return results

    client = connect(orthanc.dicomweb, CREDENTIALS, retries=1, backoff=0.05)
    with pytest.raises(PacsUnavailable, match="STOW-RS"):
        PacsSeriesSegmenter(client, MODEL, segment_then_outage, stable_for=0).run_once()
    orthanc.start()
    assert _instances(orthanc, "SEG") == [] and _instances(orthanc, "SR") == []  # nothing half-stored

    segmenter = PacsSeriesSegmenter(connect(orthanc.dicomweb, CREDENTIALS), MODEL, threshold_segment, stable_for=0)
    assert segmenter.run_once().done == 1
    (sr_ref,) = _instances(orthanc, "SR")
    orthanc_id = requests.post(f"{orthanc.url}/tools/lookup", data=sr_ref["00080018"]["Value"][0],
                               auth=(ORTHANC_USER, ORTHANC_PASSWORD), timeout=10).json()[0]["ID"]
    requests.delete(f"{orthanc.url}/instances/{orthanc_id}", auth=(ORTHANC_USER, ORTHANC_PASSWORD),
                    timeout=10).raise_for_status()  # a series left with its SEG and no report
    assert segmenter.run_once().done == 1  # completed: segmented again, stored under the same UIDs
    assert len(_instances(orthanc, "SEG")) == 1 and len(_instances(orthanc, "SR")) == 1
    assert segmenter.run_once().done == 0


@needs_orthanc
@pytest.mark.slow
def test_fanet_pacs_with_a_volume_run_stores_what_dicom_infer_writes(orthanc, tmp_path, monkeypatch, capsys):
    """The CLI end to end: a 3-D run (echo weights: the mask follows the start mask, so it has a shape) over a CT
    series in Orthanc; the stored SEG equals the SEG ``fanet dicom_infer`` writes from the same files, and no
    patient data or password reaches the log."""
    from fanet_monai.cli import run
    from fanet_monai.data import make_volume_dataset

    monkeypatch.setenv(ENV_USERNAME, ORTHANC_USER)
    monkeypatch.setenv(ENV_PASSWORD, ORTHANC_PASSWORD)
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    data = make_volume_dataset(tmp_path / "train", num_volumes=4, shape=(16, 16, 12), kind="blobs", num_classes=2,
                               seed=3)
    root = echo_volume_run(tmp_path, data)
    hu = (np.asarray(nib.load(sorted((data / "images").iterdir())[0]).dataobj) * 400 - 200).astype(np.int16)
    series = make_ct_series(hu, spacing=(1.0, 1.0, 1.0))
    _upload(orthanc, series, tmp_path / "series")
    assert run(["pacs", "--url", orthanc.dicomweb, "--bundle_root", str(root), "--num_workers", "0",
                "--series_stable_for", "0"]) == 0
    assert run(["dicom_infer", str(tmp_path / "series"), str(tmp_path / "local"), "--bundle_root", str(root),
                "--num_workers", "0"]) == 0
    logged = capsys.readouterr()
    local = hd.seg.segread(tmp_path / "local" / f"{series[0].SeriesInstanceUID}.seg.dcm")
    (seg_ref,) = _instances(orthanc, "SEG")
    client = connect(orthanc.dicomweb, CREDENTIALS)
    stored = client.retrieve_instance(seg_ref["0020000D"]["Value"][0], seg_ref["0020000E"]["Value"][0],
                                      seg_ref["00080018"]["Value"][0])
    assert stored.SOPInstanceUID == local.SOPInstanceUID  # same model, same series: the same UID
    stored.save_as(tmp_path / "stored.seg.dcm")
    uids = [ds.SOPInstanceUID for ds in series]
    pixels = [hd.seg.segread(p).get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                              skip_overlap_checks=True)
              for p in (tmp_path / "stored.seg.dcm", tmp_path / "local" / f"{series[0].SeriesInstanceUID}.seg.dcm")]
    assert np.array_equal(*pixels) and 0 < (pixels[0] > 0).mean() < 1
    assert [s.SegmentLabel for s in local.SegmentSequence] == ["Core", "Rim"]
    assert len(_instances(orthanc, "SR")) == 1
    assert run(["pacs", "--url", orthanc.dicomweb, "--bundle_root", str(root), "--num_workers", "0",
                "--series_stable_for", "0"]) == 0  # idempotent
    assert len(_instances(orthanc, "SEG")) == 1 and len(_instances(orthanc, "SR")) == 1
    text = logged.out + logged.err + capsys.readouterr().err
    assert ORTHANC_PASSWORD not in text and str(series[0].PatientName) not in text


def review_segment(volumes: dict) -> dict:
    """:func:`threshold_segment` plus a where-to-look map (high near the 0 HU edge) as a "review" SEG."""
    out = threshold_segment(volumes)
    for uid, result in out.items():
        look = np.clip(1.0 - np.abs(result.volume.array) / 100.0, 0.0, 1.0).astype(np.float32)
        result.review = build_series_review(result.volume, look, MODEL, SETTINGS, {"where_to_look": "instability"})
    return out


@needs_orthanc
def test_with_the_map_on_a_series_gets_its_review_seg_in_the_same_store(orthanc, tmp_path):
    """``fanet pacs --where_to_look``: SEG, volume report and the FRACTIONAL review SEG in one STOW-RS; a series
    stored before the map was switched on (no review SEG) is done again, once."""
    first, second = make_ct_series(_hounsfield(0)), make_ct_series(_hounsfield(1))
    _upload(orthanc, second, tmp_path / "second")
    plain = PacsSeriesSegmenter(connect(orthanc.dicomweb, CREDENTIALS), MODEL, threshold_segment, stable_for=0)
    assert plain.run_once().done == 1 and _instances(orthanc, "SEG") and len(_instances(orthanc, "SEG")) == 1
    _upload(orthanc, first, tmp_path / "first")
    mapped = PacsSeriesSegmenter(connect(orthanc.dicomweb, CREDENTIALS), MODEL, review_segment, stable_for=0,
                                 review=True)
    assert mapped.run_once().done == 2  # the new series, and the old one for its missing review SEG
    segs = {r["00080018"]["Value"][0] for r in _instances(orthanc, "SEG")}
    for ds in (first[0], second[0]):
        assert series_seg_sop_uid(ds.SeriesInstanceUID, review_model(MODEL)) in segs
    assert len(segs) == 4 and len(_instances(orthanc, "SR")) == 2  # same UIDs: nothing stored twice
    assert mapped.run_once().done == 0
