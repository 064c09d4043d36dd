"""``fanet pacs`` for a run trained on volumes: CT/MR **series** over DICOMweb, one SEG + one volume report each.

- **QIDO-RS** lists the series of the configured modalities (CT and MR by default) with their number of instances.
  A series is done when the PACS holds both its SEG and its volume report from this model version: their SOP
  Instance UIDs are derived from the Series Instance UID and the model version
  (:func:`~fanet_monai.dicom.series_seg.series_seg_sop_uid`, :func:`~fanet_monai.dicom.sr.volume_report_uid`), so
  the check needs no retrieval, and a re-run stores nothing new.
- **Stability**: a series still receiving instances is left alone until its instance count has not changed for
  ``stable_for`` seconds (``--series_stable_for``, 60 by default; 0 takes every series as it is). A single run waits
  for the series it has seen changing; ``--watch`` looks again at its next poll.
- **WADO-RS** streams the series' instances (in their stored transfer syntax) to a temporary folder; the series is
  read and checked as ``dicom_infer`` reads a folder (:func:`~fanet_monai.dicom.series.read_series`: one line per
  refused series naming the instance; the other series go on).
- Inference is :func:`~fanet_monai.dicom.series_pipeline.segment_series` — ``fanet infer`` on the series' volumes,
  so the stored SEG holds the voxels ``fanet dicom_infer`` writes.
- **STOW-RS** stores the SEG and the report **in one request**. Should the PACS go away in between (or keep one and
  not the other), the series is still not done — the next run segments it again and stores both under the same
  UIDs, which the PACS keeps once.
- Retries, credentials and logs as :mod:`fanet_monai.dicom.pacs`: UIDs only, never patient data or secrets.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import requests
from dicomweb_client.api import DICOMwebClient

from fanet_monai.dicom.pacs import ORIGINAL_SYNTAX, PacsPoller, _pacs_call, _uid
from fanet_monai.dicom.pipeline import Summary
from fanet_monai.dicom.predictor import ModelIdentity
from fanet_monai.dicom.reader import SourceError
from fanet_monai.dicom.series import SeriesError, find_series, read_series
from fanet_monai.dicom.series_pipeline import segment_series
from fanet_monai.dicom.seg import review_model
from fanet_monai.dicom.series_seg import series_seg_sop_uid
from fanet_monai.dicom.sr import volume_report_uid
from fanet_monai.where_to_look import check_where_to_look

__all__ = ["PacsSeriesSegmenter", "SeriesRef", "SeriesStability"]

logger = logging.getLogger("fanet_monai.dicom.pacs")

#: QIDO-RS attributes: Study/Series Instance UID, Modality, Number of Series Related Instances
SERIES_FIELDS = ["NumberOfSeriesRelatedInstances", "Modality"]


@dataclass(frozen=True)
class SeriesRef:
    """A series as QIDO-RS lists it."""

    study_uid: str
    series_uid: str
    modality: str
    instances: int


@dataclass
class SeriesStability:
    """When a series counts as complete: its instance count unchanged for ``stable_for`` seconds.

    :meth:`wait` gives the seconds still to wait (0: ready); a series seen with another count starts again.
    """

    stable_for: float = 60.0
    clock: Callable[[], float] = time.monotonic
    seen: dict[str, tuple[int, float]] = field(default_factory=dict)

    def wait(self, series: SeriesRef) -> float:
        now = self.clock()
        count, since = self.seen.get(series.series_uid, (None, now))
        if count != series.instances:
            self.seen[series.series_uid] = (series.instances, now)
            since = now
        return max(0.0, self.stable_for - (now - since))


class PacsSeriesSegmenter(PacsPoller):
    """One PACS, one volume bundle: :meth:`run_once` segments the complete series that lack this model's SEG or
    volume report; :meth:`watch` polls until stopped.

    Args:
        client: from :func:`~fanet_monai.dicom.pacs.connect`.
        model: the model version (its key names the SEG and report UIDs).
        segment: ``{Series Instance UID: volume} -> {uid: SeriesResult}`` (the bundle:
            :func:`~fanet_monai.dicom.series_pipeline.segment_series` with the run's settings).
        modalities: the series to look at.
        stable_for: seconds a series' instance count must stay unchanged before it is segmented.
        wait_for_stable: in :meth:`run_once`, wait for series that are not stable yet (a single run) instead of
            leaving them to the next poll (``watch``).
        batch_size: series retrieved and segmented together (one bundle run); at most this many are held at once.
    """

    def __init__(self, client: DICOMwebClient, model: ModelIdentity, segment: Callable[[dict], dict],
                 modalities: Sequence[str] = ("CT", "MR"), stable_for: float = 60.0,
                 wait_for_stable: bool = True, batch_size: int = 4, review: bool = False) -> None:
        self.client, self.model, self.segment = client, model, segment
        #: the where-to-look map is on: a series is done only with its "review" SEG stored too
        self.review = bool(review)
        self.modalities = tuple(modalities)
        self.stability = SeriesStability(float(stable_for))
        self.wait_for_stable, self.batch_size = wait_for_stable, max(1, int(batch_size))
        #: Series Instance UIDs refused for their content in this session (with their instance count): reported
        #: once, tried again only when the series changes
        self.rejected: dict[str, int] = {}

    def stored(self) -> set[str]:
        """SOP Instance UIDs of the SEG and SR instances in the PACS."""
        uids: set[str] = set()
        for modality in ("SEG", "SR"):
            with _pacs_call("QIDO-RS search"):
                found = self.client.search_for_instances(search_filters={"Modality": modality}, get_remaining=True)
            uids |= {uid for uid in (_uid(r, "00080018") for r in found) if uid}
        return uids

    def expected(self, series_uid: str) -> tuple[str, ...]:
        """The SOP Instance UIDs of the series' SEG and volume report from this model (and of its "review" SEG, the
        where-to-look map, when that is on)."""
        uids = (series_seg_sop_uid(series_uid, self.model), volume_report_uid(series_uid, self.model))
        return uids + ((series_seg_sop_uid(series_uid, review_model(self.model)),) if self.review else ())

    def listed(self) -> list[SeriesRef]:
        """QIDO-RS: the series of the configured modalities."""
        out: dict[str, SeriesRef] = {}
        for modality in self.modalities:
            with _pacs_call("QIDO-RS series search"):
                found = self.client.search_for_series(search_filters={"Modality": modality}, fields=SERIES_FIELDS,
                                                      get_remaining=True)
            for result in found:
                study, series = _uid(result, "0020000D"), _uid(result, "0020000E")
                count = _uid(result, "00201209")
                if study and series:
                    out[series] = SeriesRef(study, series, modality, int(count) if count else 0)
        return list(out.values())

    def pending(self) -> tuple[list[SeriesRef], float]:
        """The complete series still to segment, and the seconds until the next incomplete one may be complete
        (0 when none is waiting)."""
        stored = self.stored()
        ready, waits = [], []
        for series in self.listed():
            if set(self.expected(series.series_uid)) <= stored:
                continue
            if self.rejected.get(series.series_uid) == series.instances:
                continue
            wait = self.stability.wait(series)
            if wait > 0:
                logger.info("series %s: %d instance(s), waiting %.0f s for it to be complete", series.series_uid,
                            series.instances, wait)
                waits.append(wait)
            else:
                ready.append(series)
        return ready, min(waits, default=0.0)

    def _retrieve(self, series: SeriesRef, folder: Path) -> None:
        folder.mkdir(parents=True)
        with _pacs_call(f"WADO-RS retrieve of series {series.series_uid}"):
            for number, dataset in enumerate(self.client.iter_series(series.study_uid, series.series_uid,
                                                                     media_types=ORIGINAL_SYNTAX)):
                dataset.save_as(folder / f"{number:05d}.dcm", enforce_file_format=True)

    def _store(self, series: SeriesRef, result: Any, summary: Summary) -> None:
        uid = series.series_uid
        with _pacs_call(f"STOW-RS of the SEG and volume report of series {uid}"):
            try:
                review = [result.review] if getattr(result, "review", None) is not None else []
                response = self.client.store_instances([result.seg, result.report, *review])
            except requests.HTTPError as error:
                if error.response is not None and error.response.status_code >= 500:
                    raise
                status = error.response.status_code if error.response is not None else "?"
                summary.fail(SeriesError(f"series {uid}: STOW-RS rejected the SEG and report (HTTP {status})"))
                return
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            summary.fail(SeriesError(f"series {uid}: STOW-RS failed for {len(failed)} of the SEG and report"))
            return
        summary.done += 1
        summary.segs += 1
        logger.info("stored SEG %s and volume report %s for series %s: %s", result.seg.SOPInstanceUID,
                    result.report.SOPInstanceUID, uid,
                    ", ".join(f"{r['label']} {r['volume_ml']} mL" for r in result.measured))

    def process(self, batch: list[SeriesRef], summary: Summary, workdir: Path) -> None:
        """WADO-RS every series of ``batch``, segment the readable ones in one bundle run, STOW-RS each SEG +
        report; a series that cannot be read adds one line to ``summary``."""
        volumes, refs = {}, {}
        for series in batch:
            folder = workdir / series.series_uid
            self._retrieve(series, folder)
            try:
                found = find_series(folder)
                if series.series_uid not in found:
                    raise SeriesError(f"series {series.series_uid}: WADO-RS returned no instance of it")
                volume = read_series(found[series.series_uid])
            except (SeriesError, SourceError) as error:
                self.rejected[series.series_uid] = series.instances
                summary.fail(error)
                continue
            for note in volume.notes:
                summary.note(f"series {series.series_uid}: {note}")
            volumes[series.series_uid], refs[series.series_uid] = volume, series
        if not volumes:
            return
        for uid, result in self.segment(volumes).items():
            self._store(refs[uid], result, summary)

    def run_once(self, stop: threading.Event | None = None) -> Summary:
        """Segment every complete series that lacks this model's SEG or report (stops between series when ``stop``
        is set); with ``wait_for_stable``, waits for the series still changing, then looks again."""
        stop = stop or threading.Event()
        summary = Summary()
        while not stop.is_set():
            ready, wait = self.pending()
            logger.info("%d complete series without a SEG and volume report from model %s", len(ready),
                        self.model.key)
            for start in range(0, len(ready), self.batch_size):  # one bundle run (one model load) per batch
                if stop.is_set():
                    break
                with tempfile.TemporaryDirectory(prefix="fanet-pacs-series-") as tmp:
                    self.process(ready[start:start + self.batch_size], summary, Path(tmp))
            if not (self.wait_for_stable and wait > 0):
                break
            stop.wait(wait)
        logger.info("%d series segmented, %d SEG + report pair(s) stored, %d failed", summary.done, summary.segs,
                    len(summary.failed))
        return summary


def run_pacs_series(client: DICOMwebClient, bundle_root: str, bundle_dir: str | None, watch: bool,
                    stable_for: float, **overrides: Any) -> PacsSeriesSegmenter:
    """The series segmenter of ``fanet pacs`` for a volume run (the bundle's model and settings)."""
    from fanet_monai.dicom.series_pipeline import model_identity

    model = model_identity(Path(bundle_root), bundle_dir, overrides.get("ckpt_path"))

    def segment(volumes: dict) -> dict:
        return segment_series(volumes, model, bundle_root, bundle_dir, **overrides)

    return PacsSeriesSegmenter(client, model, segment, stable_for=stable_for, wait_for_stable=not watch,
                               review=check_where_to_look(overrides.get("where_to_look")) is not None)
