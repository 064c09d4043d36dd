"""``fanet pacs`` against a real Orthanc (Debian packages orthanc + orthanc-dicomweb; .ci/run installs them):
upload → QIDO/WADO-RS → infer → STOW-RS, SEG references and pixels checked, idempotence, --watch with SIGTERM,
an Orthanc outage in the middle of a run, 5xx and unreachable PACS, credentials, no patient data in the logs."""

from __future__ import annotations

import http.server
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import fire
import highdicom as hd
import numpy as np
import pytest

from dicom_support import (DCIODVFY, DICOMWEB_PLUGIN, INFER, ORTHANC, ORTHANC_PASSWORD, ORTHANC_USER,
                           OrthancServer, dciodvfy_errors, fanet_infer_png, smooth_rgb)
from fanet_monai.cli import FanetCLI
from fanet_monai.dicom.pacs import ENV_PASSWORD, ENV_TOKEN, ENV_USERNAME, PacsSegmenter, PacsUnavailable, \
    connect, load_credentials
from fanet_monai.dicom.reader import decode_frame, read_header
from fanet_monai.dicom.samples import make_source, save

ROOT = Path(__file__).resolve().parents[1]
PHI = ("Doe^Jane", "PID-0001", "19700101")
needs_orthanc = pytest.mark.skipif(
    ORTHANC is None or not DICOMWEB_PLUGIN.is_file(),
    reason="Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb, as root; "
           ".ci/run does this) — the PACS round trip cannot run here",
)
CREDENTIALS = {"username": ORTHANC_USER, "password": ORTHANC_PASSWORD}


@pytest.fixture(scope="module")
def predictor(tiny_bundle_root):
    from fanet_monai.dicom.predictor import BundlePredictor

    return BundlePredictor(tiny_bundle_root, **INFER)


def cli_args(url: str, bundle_root: Path) -> list[str]:
    return ["pacs", "--url", url, "--bundle_root", str(bundle_root),
            *[f"--{k}={v}".replace(" ", "") for k, v in INFER.items()]]


def upload_all(server: OrthancServer, folder: Path, datasets: dict) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: Path(save(ds, folder / f"{name}.dcm")) for name, ds in datasets.items()}
    for path in paths.values():
        server.upload(path)
    return paths


def referenced_uid(seg) -> str:
    return seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID


def test_credentials_from_env_or_file_never_in_the_url(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    monkeypatch.setenv(ENV_USERNAME, "alice")
    monkeypatch.setenv(ENV_PASSWORD, "pw")
    assert load_credentials() == {"username": "alice", "password": "pw"}
    monkeypatch.setenv(ENV_TOKEN, "tok")
    assert load_credentials() == {"token": "tok"}
    file = tmp_path / "pacs.json"
    file.write_text('{"username": "bob", "password": "pw2"}')
    file.chmod(0o600)
    assert load_credentials(file) == {"username": "bob", "password": "pw2"}
    file.write_text('{"user": "bob"}')
    with pytest.raises(ValueError, match="pacs.json: expected JSON"):
        load_credentials(file)
    with pytest.raises(ValueError, match="must not hold credentials"):
        connect("http://bob:pw@127.0.0.1:8042/dicom-web")
    assert connect("http://127.0.0.1:1/dicom-web", {"token": "tok"})._session.headers["Authorization"] == \
        "Bearer tok"


def test_unreachable_pacs_is_retried_then_reported(predictor):
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # accepts, then hangs up at once: a broken PACS
    attempts = []

    def hang_up():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            attempts.append(time.monotonic())
            connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
    try:
        with pytest.raises(PacsUnavailable, match="unreachable after retries"):
            PacsSegmenter(connect(url, retries=2, backoff=0.05), predictor).run_once()
    finally:
        listener.close()
    assert len(attempts) == 3  # first try + 2 retries, then a clear error


def test_cli_exit_code_2_when_the_pacs_stays_unreachable(tiny_bundle_root, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SystemExit) as info:
        fire.Fire(FanetCLI, command=[*cli_args(f"http://127.0.0.1:{port}/dicom-web", tiny_bundle_root),
                                     "--retries", "1", "--backoff", "0.01"])
    assert info.value.code == 2
    assert "QIDO-RS search: PACS unreachable after retries" in capsys.readouterr().out


def test_5xx_answers_are_retried_with_backoff_then_reported(predictor):
    hits = []

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(time.monotonic())
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        with pytest.raises(PacsUnavailable, match="503"):
            PacsSegmenter(connect(url, retries=3, backoff=0.05), predictor).run_once()
    finally:
        server.shutdown()
    assert len(hits) == 4  # first try + 3 retries
    gaps = np.diff(hits)
    assert gaps[-1] > gaps[0]  # exponential backoff


@needs_orthanc
def test_wrong_credentials_are_a_clear_error_without_the_password(orthanc, predictor):
    segmenter = PacsSegmenter(connect(orthanc.dicomweb, {"username": ORTHANC_USER, "password": "wrong-pw"},
                                      retries=1, backoff=0.01), predictor)
    with pytest.raises(PacsUnavailable, match="HTTP 401 — check the PACS credentials") as info:
        segmenter.run_once()
    assert "wrong-pw" not in str(info.value)


@needs_orthanc
@pytest.mark.slow
def test_round_trip_through_orthanc(orthanc, tiny_bundle_root, predictor, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv(ENV_USERNAME, ORTHANC_USER)
    monkeypatch.setenv(ENV_PASSWORD, ORTHANC_PASSWORD)
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    rgb = smooth_rgb(50, 62, 1)
    good = {
        "es": make_source(rgb, "ES"),
        "op": make_source(rgb[::-1], "OP"),
        "jpeg": make_source(smooth_rgb(64, 64, 2), "ES", jpeg=True),
        "mfsc": make_source(np.stack([rgb, rgb[:, ::-1]]), "MFSC"),
    }
    no_pixels = make_source(rgb, "ES")
    del no_pixels.PixelData
    h264 = make_source(rgb, "ES", jpeg=True)
    h264.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"
    sr = make_source(rgb, "ES")
    del sr.PixelData
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    sr.Modality = "SR"
    bad = {"no_pixels": no_pixels, "h264": h264}
    paths = upload_all(orthanc, tmp_path / "sources", {**good, **bad, "sr": sr})

    with pytest.raises(SystemExit) as first:
        fire.Fire(FanetCLI, command=cli_args(orthanc.dicomweb, tiny_bundle_root))
    assert first.value.code == 3  # EXIT_PARTIAL: the two bad ES instances failed, the rest was stored
    logged = capsys.readouterr().out + caplog.text
    failures = {line[line.index("FAILED "):] for line in logged.splitlines() if "FAILED " in line}
    assert len(failures) == 2
    assert any(bad["no_pixels"].SOPInstanceUID in f and "no PixelData" in f for f in failures)
    assert any(bad["h264"].SOPInstanceUID in f and "1.2.840.10008.1.2.4.102" in f for f in failures)

    segs = orthanc.seg_instances()
    assert len(segs) == 3 + 2  # one per single-frame source, one per frame of the 2-frame SC
    by_source: dict[str, list] = {}
    for seg in segs:
        by_source.setdefault(referenced_uid(seg), []).append(seg)
    assert set(by_source) == {ds.SOPInstanceUID for ds in good.values()}
    pixels = {"es": rgb, "op": rgb[::-1], "mfsc-1": rgb, "mfsc-2": rgb[:, ::-1],
              "jpeg": decode_frame(read_header(paths["jpeg"]))}
    expected = fanet_infer_png(tiny_bundle_root, pixels, tmp_path / "infer")
    for key, mask in expected.items():
        name, _, frame = key.partition("-")
        candidates = by_source[good[name].SOPInstanceUID]
        seg = candidates[0] if not frame else next(
            s for s in candidates
            if s.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
            .ReferencedFrameNumber == int(frame))
        assert seg.StudyInstanceUID == good[name].StudyInstanceUID
        assert seg.SeriesInstanceUID != good[name].SeriesInstanceUID
        path = tmp_path / f"{key}.seg.dcm"
        seg.save_as(path)
        if DCIODVFY:
            assert dciodvfy_errors(path) == []
        assert np.array_equal(hd.seg.segread(path).pixel_array.reshape(mask.shape).astype(bool), mask), key

    with pytest.raises(SystemExit) as second:  # idempotent: nothing new stored
        fire.Fire(FanetCLI, command=cli_args(orthanc.dicomweb, tiny_bundle_root))
    assert second.value.code == 3
    logged += capsys.readouterr().out + caplog.text
    assert "0 source(s) segmented, 0 SEG instance(s) stored, 2 failed" in logged
    assert len(orthanc.seg_instances()) == 5
    for secret in (*PHI, ORTHANC_PASSWORD):
        assert secret not in logged

    segmenter = PacsSegmenter(connect(orthanc.dicomweb, CREDENTIALS), predictor)  # as in --watch: one session
    assert len(segmenter.run_once().failed) == 2
    again = segmenter.run_once()  # a bad source is reported once per session, not at every poll
    assert again.failed == [] and again.done == 0 and len(orthanc.seg_instances()) == 5


@needs_orthanc
@pytest.mark.slow
def test_orthanc_stopped_mid_run_is_retried_nothing_lost_or_duplicated(orthanc, predictor, tmp_path):
    datasets = {f"es{i}": make_source(smooth_rgb(50, 62, i), "ES") for i in range(4)}
    upload_all(orthanc, tmp_path / "sources", datasets)
    restarted = threading.Event()

    class Outage(logging.Handler):
        """At the first stored SEG, stop Orthanc; start it again 1.5 s later (same port and storage)."""

        def emit(self, record):
            if record.getMessage().startswith("stored SEG") and orthanc.process is not None and \
                    not restarted.is_set():
                orthanc.stop()
                timer = threading.Timer(1.5, lambda: (orthanc.start(), restarted.set()))
                timer.start()

    handler = Outage()
    pacs_logger = logging.getLogger("fanet_monai.dicom.pacs")
    pacs_logger.addHandler(handler)
    try:
        segmenter = PacsSegmenter(connect(orthanc.dicomweb, CREDENTIALS, retries=8, backoff=0.2), predictor)
        summary = segmenter.run_once()
    finally:
        pacs_logger.removeHandler(handler)
    assert restarted.is_set()
    assert summary.done == 4 and summary.failed == []
    segs = orthanc.seg_instances()
    assert sorted(referenced_uid(s) for s in segs) == sorted(ds.SOPInstanceUID for ds in datasets.values())
    assert segmenter.run_once().done == 0 and len(orthanc.seg_instances()) == 4


@needs_orthanc
@pytest.mark.slow
def test_watch_picks_up_a_later_upload_and_stops_on_sigterm(orthanc, tiny_bundle_root, tmp_path):
    first, later = make_source(smooth_rgb(50, 62, 7), "ES"), make_source(smooth_rgb(50, 62, 8), "OP")
    upload_all(orthanc, tmp_path / "a", {"first": first})
    env = {**os.environ, "PYTHONPATH": str(ROOT), ENV_USERNAME: ORTHANC_USER, ENV_PASSWORD: ORTHANC_PASSWORD}
    env.pop(ENV_TOKEN, None)
    log = tmp_path / "watch.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "fanet_monai", *cli_args(orthanc.dicomweb, tiny_bundle_root),
                                    "--watch", "--interval", "0.5"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        def wait_for(count: int) -> None:
            deadline = time.time() + 120
            while time.time() < deadline and process.poll() is None:
                if len(orthanc.seg_instances()) >= count:
                    return
                time.sleep(0.5)
            raise AssertionError(f"no {count} SEG(s) stored; log:\n{log.read_text()[-3000:]}")

        wait_for(1)
        upload_all(orthanc, tmp_path / "b", {"later": later})
        wait_for(2)
        process.send_signal(15)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "SIGTERM received" in text and "watch stopped" in text
    assert sorted(referenced_uid(s) for s in orthanc.seg_instances()) == sorted([first.SOPInstanceUID,
                                                                                 later.SOPInstanceUID])
    for secret in (*PHI, ORTHANC_PASSWORD):
        assert secret not in text


@needs_orthanc
@pytest.mark.slow
def test_pacs_with_the_map_on_stores_the_review_seg_beside_each_seg(orthanc, tiny_bundle_root, tmp_path,
                                                                    monkeypatch):
    """``fanet pacs --where_to_look True``: each source gets its SEG and its FRACTIONAL "review" SEG (the map) in the
    same store; a second run stores nothing."""
    monkeypatch.setenv(ENV_USERNAME, ORTHANC_USER)
    monkeypatch.setenv(ENV_PASSWORD, ORTHANC_PASSWORD)
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    source = make_source(smooth_rgb(50, 62, 3), "ES")
    upload_all(orthanc, tmp_path / "sources", {"es": source})
    args = [*cli_args(orthanc.dicomweb, tiny_bundle_root), "--where_to_look=starts"]
    with pytest.raises(SystemExit) as first:
        fire.Fire(FanetCLI, command=args)
    assert first.value.code == 0
    segs = orthanc.seg_instances()
    assert len(segs) == 2 and {referenced_uid(s) for s in segs} == {source.SOPInstanceUID}
    (review,) = [s for s in segs if " review " in s.SeriesDescription]
    assert review.SegmentationType == "FRACTIONAL"
    with pytest.raises(SystemExit) as second:
        fire.Fire(FanetCLI, command=args)
    assert second.value.code == 0 and len(orthanc.seg_instances()) == 2
