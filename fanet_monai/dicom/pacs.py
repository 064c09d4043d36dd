"""A PACS round trip over DICOMweb (``fanet pacs``): QIDO-RS finds the instances of the configured modalities that
have no SEG from this model version, WADO-RS retrieves each one, the bundle infers, STOW-RS stores the SEG.

- Idempotent: SEG UIDs are derived from the source UIDs and the model version (:func:`~fanet_monai.dicom.seg.
  seg_uids`), and a source counts as done only when the PACS lists all its SEG instances, so re-running (or a
  crash between inference and store) never stores a second SEG for the same source and model version.
- Failures: a source that cannot be processed gets one ``FAILED SOP Instance UID ...: reason`` line and the others
  go on; nothing is stored for it. HTTP connection errors and 408/429/5xx answers are retried ``retries`` times
  with exponential backoff (dicomweb-client's retry settings); then :class:`PacsUnavailable` stops the run
  (``--watch`` tries again at the next poll).
- Credentials (HTTP basic or bearer token) come from ``FANET_PACS_USERNAME`` / ``FANET_PACS_PASSWORD`` /
  ``FANET_PACS_TOKEN`` or a JSON file (``{"username": ..., "password": ...}`` or ``{"token": ...}``); they are
  never logged. Logs carry UIDs only, never patient name, ID or birth date.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
from http import HTTPStatus
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from retrying import RetryError

from fanet_monai.dicom.pipeline import Summary, segment_source
from fanet_monai.dicom.predictor import BundlePredictor
from fanet_monai.dicom.reader import SourceError, check_source, read_header
from fanet_monai.dicom.seg import SegSettings, seg_uids
from fanet_monai.errors import EXIT_PARTIAL

__all__ = ["PacsPoller", "PacsUnavailable", "PacsSegmenter", "connect", "load_credentials", "run_pacs"]

logger = logging.getLogger("fanet_monai.dicom.pacs")

ENV_USERNAME, ENV_PASSWORD, ENV_TOKEN = "FANET_PACS_USERNAME", "FANET_PACS_PASSWORD", "FANET_PACS_TOKEN"
#: answers worth another try: timeout, too many requests, server errors
RETRY_STATUS = (HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.INTERNAL_SERVER_ERROR,
                HTTPStatus.BAD_GATEWAY, HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.GATEWAY_TIMEOUT)
#: WADO-RS in the stored transfer syntax (no transcoding by the PACS)
ORIGINAL_SYNTAX = (("application/dicom", "*"),)


class PacsUnavailable(RuntimeError):
    """The PACS did not answer (or answered 5xx / 401 / 403) after the configured retries."""


def load_credentials(path: str | os.PathLike | None = None) -> dict[str, str]:
    """``{"username", "password"}`` or ``{"token"}`` from the JSON file ``path``, else from the environment
    (``FANET_PACS_USERNAME`` / ``FANET_PACS_PASSWORD`` or ``FANET_PACS_TOKEN``); ``{}`` when none are set."""
    if path is not None:
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: cannot read PACS credentials ({type(error).__name__}); expected JSON "
                             '{"username": ..., "password": ...} or {"token": ...}.') from None
        if not isinstance(values, dict) or not ({"username", "password"} <= set(values) or "token" in values):
            raise ValueError(f'{path}: expected JSON {{"username": ..., "password": ...}} or {{"token": ...}}.')
        if Path(path).stat().st_mode & 0o077:
            logger.warning("%s is readable by other users; chmod 600 it", path)
        return {k: str(v) for k, v in values.items() if k in ("username", "password", "token")}
    if os.environ.get(ENV_TOKEN):
        return {"token": os.environ[ENV_TOKEN]}
    if os.environ.get(ENV_USERNAME):
        return {"username": os.environ[ENV_USERNAME], "password": os.environ.get(ENV_PASSWORD, "")}
    return {}


def connect(url: str, credentials: dict[str, str] | None = None, retries: int = 5, backoff: float = 0.5,
            timeout: float = 60.0) -> DICOMwebClient:
    """A ``DICOMwebClient`` that retries connection errors and 408/429/5xx answers ``retries`` times with
    exponential backoff (``backoff * 2**n`` seconds; dicomweb-client's own ``set_http_retry_params``), for every
    request: the deterministic SEG UIDs make a repeated STOW harmless."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url {url!r}: expected http(s)://host:port/dicom-web.")
    if parts.username or parts.password:
        raise ValueError("--url must not hold credentials: use FANET_PACS_USERNAME/FANET_PACS_PASSWORD "
                         "(or FANET_PACS_TOKEN) or --credentials FILE.")
    session = requests.Session()
    credentials = credentials or {}
    if "token" in credentials:
        session.headers["Authorization"] = f"Bearer {credentials['token']}"
    elif "username" in credentials:
        session.auth = (credentials["username"], credentials.get("password", ""))
    client = DICOMwebClient(url, session=session, timeout=timeout)
    client.set_http_retry_params(retry=True, max_attempts=retries + 1, wait_exponential_multiplier=backoff * 500,
                                 retriable_error_codes=RETRY_STATUS)
    return client


@contextmanager
def _pacs_call(what: str) -> Iterator[None]:
    """Turn what ``requests`` raises after the retries into :class:`PacsUnavailable` (5xx, no connection,
    401/403); other HTTP errors (404, 400, ...) pass through as ``requests.HTTPError``."""
    try:
        yield
    except (requests.ConnectionError, requests.Timeout) as error:
        raise PacsUnavailable(f"{what}: PACS unreachable after retries ({type(error).__name__})") from None
    except RetryError as error:  # the last answer was still a retriable status
        response = error.last_attempt.value if not error.last_attempt.has_exception else None
        status = getattr(response, "status_code", "?")
        raise PacsUnavailable(f"{what}: PACS answered HTTP {status} after retries") from None
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise PacsUnavailable(f"{what}: HTTP {status} — check the PACS credentials") from None
        if status is not None and status >= 500:
            raise PacsUnavailable(f"{what}: PACS answered HTTP {status} after retries") from None
        raise


def _uid(result: dict, keyword_tag: str) -> str | None:
    values = result.get(keyword_tag, {}).get("Value")
    return str(values[0]) if values else None


class PacsPoller:
    """What every PACS job shares: :meth:`run_once` does what is missing (a :class:`Summary`), :meth:`watch` calls
    it every ``interval`` seconds until stopped."""

    def run_once(self, stop: threading.Event | None = None) -> Summary:
        raise NotImplementedError

    def watch(self, interval: float = 10.0, stop: threading.Event | None = None) -> int:
        """Poll every ``interval`` seconds until ``stop`` is set (SIGINT/SIGTERM set it when called from the main
        thread). Returns ``EXIT_PARTIAL`` (3) if any source failed during the session, else 0; an unreachable PACS is
        logged and retried at the next poll; a source rejected for its content is reported once, not at every poll."""
        stop = stop or threading.Event()
        failed = False
        with _stop_on_signals(stop):
            while not stop.is_set():
                try:
                    failed |= bool(self.run_once(stop).failed)
                except PacsUnavailable as error:
                    logger.error("%s; polling again in %.0f s", error, interval)
                stop.wait(interval)
        logger.info("watch stopped")
        return EXIT_PARTIAL if failed else 0


class PacsSegmenter(PacsPoller):
    """One PACS, one bundle: :meth:`run_once` segments what is missing, :meth:`watch` polls until stopped.

    Args:
        client: from :func:`connect`.
        predictor: the loaded bundle.
        settings: SEG description and the modalities to query (``dicom_seg`` of the bundle).
        fractional: store FRACTIONAL SEGs (probabilities) instead of BINARY.
    """

    def __init__(self, client: DICOMwebClient, predictor: BundlePredictor, settings: SegSettings | None = None,
                 fractional: bool = False) -> None:
        self.client, self.predictor = client, predictor
        self.settings = settings or predictor.config("dicom_seg") or SegSettings()
        self.fractional = fractional
        #: SOP Instance UIDs that failed for their content in this session: reported once, not retried each poll
        self.rejected: set[str] = set()

    def _search(self, filters: dict[str, str], fields: list[str]) -> list[dict]:
        """QIDO-RS instance search, all pages (dicomweb-client's ``get_remaining``)."""
        with _pacs_call("QIDO-RS search"):
            return self.client.search_for_instances(search_filters=filters, fields=fields, get_remaining=True)

    def existing_segs(self) -> set[str]:
        """SOP Instance UIDs of this model version's SEG instances in the PACS."""
        description = self.settings.series_description_for(self.predictor.identity)
        # Orthanc 1.10's QIDO-RS ignores matches on SeriesDescription at the instance level: filter here.
        found = self._search({"Modality": "SEG"}, ["SeriesDescription"])
        return {uid for uid in (_uid(r, "00080018") for r in found if _uid(r, "0008103E") == description) if uid}

    def pending(self) -> list[Dataset]:
        """QIDO: instances of the configured modalities whose SEG(s) from this model version are not all stored
        (each a small dataset of UIDs, SOP class and number of frames)."""
        done = self.existing_segs()
        pending, seen = [], set()
        for modality in self.settings.modalities:
            for result in self._search({"Modality": modality}, ["NumberOfFrames", "SOPClassUID"]):
                ds = Dataset()
                ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(result, "0020000D"), _uid(result, "0020000E")
                ds.SOPInstanceUID, ds.SOPClassUID = _uid(result, "00080018"), _uid(result, "00080016")
                frames = _uid(result, "00280008")
                if frames:
                    ds.NumberOfFrames = frames
                if None in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) or \
                        ds.SOPInstanceUID in seen:
                    continue
                seen.add(ds.SOPInstanceUID)
                if ds.SOPInstanceUID in self.rejected:
                    continue
                if ds.SOPClassUID is None or not set(seg_uids(ds, self.predictor.identity)[1]) <= done:
                    pending.append(ds)
        return pending

    def process(self, ref: Dataset, summary: Summary, workdir: Path) -> None:
        """WADO-RS, infer, STOW-RS for one pending instance; a failure adds one line to ``summary``."""
        uid = ref.SOPInstanceUID
        try:
            with _pacs_call(f"WADO-RS retrieve of SOP Instance UID {uid}"):
                dataset = self.client.retrieve_instance(ref.StudyInstanceUID, ref.SeriesInstanceUID, uid,
                                                        media_types=ORIGINAL_SYNTAX)
            path = workdir / f"{uid}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            source = read_header(path)
            check_source(source)
            segs = segment_source(self.predictor, path, source, self.settings, self.fractional)
        except PacsUnavailable:
            raise
        except SourceError as error:
            self.rejected.add(uid)
            summary.fail(SourceError(error.reason, uid))
            return
        except Exception as error:  # one bad instance must not stop the others
            self.rejected.add(uid)
            summary.fail(SourceError(f"{type(error).__name__}: {error}", uid))
            return
        with _pacs_call(f"STOW-RS of the SEG for SOP Instance UID {uid}"):
            try:
                response = self.client.store_instances(segs)
            except requests.HTTPError as error:
                if error.response is not None and error.response.status_code >= 500:
                    raise
                summary.fail(SourceError(f"STOW-RS rejected the SEG (HTTP {error.response.status_code})", uid))
                return
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = ", ".join(str(item.get("FailureReason", "?")) for item in failed)
            summary.fail(SourceError(f"STOW-RS failed for {len(failed)} SEG instance(s) (failure reason "
                                     f"{reasons})", uid))
            return
        summary.done += 1
        summary.segs += len(segs)
        logger.info("stored SEG for SOP Instance UID %s: %d instance(s), series %s", uid, len(segs),
                    segs[0].SeriesInstanceUID)

    def run_once(self, stop: threading.Event | None = None) -> Summary:
        """Segment every pending instance (stops early between instances when ``stop`` is set)."""
        summary = Summary()
        pending = self.pending()
        logger.info("%d instance(s) without a SEG from model %s", len(pending), self.predictor.identity.key)
        with tempfile.TemporaryDirectory(prefix="fanet-pacs-") as tmp:
            for ref in pending:
                if stop is not None and stop.is_set():
                    break
                self.process(ref, summary, Path(tmp))
                for item in Path(tmp).iterdir():
                    item.unlink()
        logger.info("%d source(s) segmented, %d SEG instance(s) stored, %d failed", summary.done, summary.segs,
                    len(summary.failed))
        return summary

@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (the current instance finishes, nothing half-stored); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        logger.info("%s received: stopping after the current instance", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_pacs(url: str, bundle_root: str = ".", bundle_dir: str | None = None, watch: bool = False,
             interval: float = 10.0, credentials: str | None = None, fractional: bool = False, retries: int = 5,
             backoff: float = 0.5, series: bool = False, series_stable_for: float = 60.0, **overrides: Any) -> int:
    """``fanet pacs``: returns the exit code — 0 all done, 3 some source failed (``EXIT_PARTIAL``), 2 PACS
    unavailable. ``series``: a volume run, one SEG + volume report per CT/MR series
    (:mod:`fanet_monai.dicom.pacs_series`); else one SEG per 2-D instance."""
    client = connect(url, load_credentials(credentials), retries, backoff)
    logger.info("PACS %s (DICOMweb), bundle root %s", url, bundle_root)
    segmenter: PacsPoller
    if series:
        from fanet_monai.dicom.pacs_series import run_pacs_series

        segmenter = run_pacs_series(client, bundle_root, bundle_dir, watch, series_stable_for, **overrides)
    else:
        segmenter = PacsSegmenter(client, BundlePredictor(bundle_root, bundle_dir, **overrides),
                                  fractional=fractional)
    if watch:
        return segmenter.watch(interval)
    try:
        return EXIT_PARTIAL if segmenter.run_once().failed else 0
    except PacsUnavailable as error:
        logger.error("%s", error)
        return 2
