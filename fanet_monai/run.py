"""A training run owns its ``bundle_root``: one process at a time, one run's checkpoints, its settings on record.

:class:`RunOwner` (wired into ``train.json``):

- :meth:`RunOwner.claim` (first in ``initialize``) takes an exclusive ``fcntl.flock`` on
  ``bundle_root/.fanet-run.lock``. The kernel drops the lock when the process ends, however it ends (``kill -9``
  included), so a dead run never blocks the root; a live one refuses a second process with a message naming it
  (pid, host, start time);
- ``claim`` refuses a *new* run into a root that holds checkpoints (``checkpoint_epoch=N.pt``, ``model.pt``) unless
  told: ``resume=True`` continues that run (same identity, its stored settings), ``overwrite=True`` deletes them and
  starts afresh — runs are never mixed;
- :meth:`RunOwner.start` (on the trainer's ``STARTED`` event, :meth:`RunOwner.attach`: after the data checks and
  after every object of the run was built, so a refused setting — an unknown network variant, a negative learning
  rate — leaves nothing written) removes temporary files that a killed process left mid-write
  (:func:`fanet_monai.io.clean_stale_temp_files`), deletes the old checkpoints when overwriting and writes
  ``bundle_root/run.json``: an identity (``run_id``, host, pid, start time, resumes) and the run's settings, which
  ``fanet evaluate``/``infer``/``ablation``/``export`` read as their defaults (:func:`stored_settings`).

Its ``state_dict`` (the run id) is saved in every epoch checkpoint; loading a checkpoint of another run raises.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import re
import uuid
import weakref
from pathlib import Path
from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events

from fanet_monai.errors import RunOwnershipError
from fanet_monai.io import clean_stale_temp_files, host_name, write_json

__all__ = [
    "INHERITED_SETTINGS",
    "LOCK_FILE",
    "RUN_FILE",
    "RunOwner",
    "checkpoint_files",
    "find_run_root",
    "read_run",
    "release_claims",
    "stored_settings",
]

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
LOCK_FILE = ".fanet-run.lock"
#: settings of a run that evaluation, inference, the ablation table and export take from it by default
INHERITED_SETTINGS = (
    "preset",
    "image_size",
    "spatial_dims",
    "image_channels",
    "num_classes",
    "label_names",
    "label_codes",
    "input_mode",
    "patch_size",
    "resize_anti_aliasing",
    "val_fraction",
    "split_seed",
    "split_mode",
    "start_mask",
    "feedback_mode",
    "num_passes",
    "refine_tolerance",
    "network_def",
    "reviewed_input",
    "volume_mode",
    "slice_axis",
    "orientation",
    "target_spacing",
    "modality",
    "ct_window",
    "crop_foreground",
    "crop_margin",
)
_CHECKPOINT = re.compile(r"^(checkpoint_epoch=\d+\.pt|model\.pt)$")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def checkpoint_files(ckpt_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints training writes in ``ckpt_dir``: ``checkpoint_epoch=N.pt`` and ``model.pt``."""
    folder = Path(ckpt_dir)
    return sorted(p for p in folder.iterdir() if _CHECKPOINT.match(p.name)) if folder.is_dir() else []


def read_run(bundle_root: str | os.PathLike) -> dict[str, Any] | None:
    """Content of ``bundle_root/run.json``, ``None`` when there is none; raises :class:`RunOwnershipError` naming
    the file when it is unreadable."""
    path = Path(bundle_root) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunOwnershipError(
            f"{path}: unreadable run record ({error}); delete it to adopt the checkpoints as a new run."
        ) from error


def find_run_root(path: str | os.PathLike) -> Path | None:
    """The ``bundle_root`` of a checkpoint or folder: the nearest of ``path`` and its two parents holding a
    ``run.json`` (``R/models/model.pt`` → ``R``); ``None`` when none does."""
    path = Path(path).resolve()
    for candidate in [path, *list(path.parents)[:2]]:
        if (candidate / RUN_FILE).is_file():
            return candidate
    return None


def stored_settings(bundle_root: str | os.PathLike, keys: tuple[str, ...] = INHERITED_SETTINGS) -> dict[str, Any]:
    """The settings ``keys`` that the run in ``bundle_root`` was trained with (empty without ``run.json``)."""
    run = read_run(bundle_root) or {}
    settings = run.get("settings", {})
    return {k: settings[k] for k in keys if k in settings}


_CLAIMED: weakref.WeakSet = weakref.WeakSet()


def release_claims() -> None:
    """Release every root this process still holds (after a failure, so an in-process caller can try again)."""
    for owner in list(_CLAIMED):
        owner.release()


def _describe_run(run: Mapping[str, Any] | None) -> str:
    if not run:
        return "a run without a run.json record"
    return f"run {run.get('run_id', '?')} (started {run.get('started', '?')} on {run.get('host', '?')})"


class RunOwner:
    """The process-wide owner of a ``bundle_root`` for one training run (see the module doc).

    Args:
        bundle_root: the run's folder.
        ckpt_dir: where its checkpoints go (default ``bundle_root/models``).
        resume: continue the run whose checkpoints are there.
        overwrite: delete the checkpoints there and start a new run.
        settings: the run's resolved settings to store (plain JSON values); more can be added with :meth:`record`.
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        ckpt_dir: str | os.PathLike | None = None,
        resume: bool = False,
        overwrite: bool = False,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        if resume and overwrite:
            raise RunOwnershipError("resume=True and overwrite=True contradict each other: choose one.")
        self.root = Path(bundle_root)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else self.root / "models"
        self.resume = bool(resume)
        self.overwrite = bool(overwrite)
        self.settings = dict(settings or {})
        self._recorded: dict[str, Any] = {}  # entries recorded before start(), written by it
        self.run: dict[str, Any] = {}
        self._lock = None
        self._previous: dict[str, Any] | None = None
        self._existing: list[Path] = []

    @property
    def run_id(self) -> str | None:
        return self.run.get("run_id")

    @property
    def claimed(self) -> bool:
        return self._lock is not None

    def _acquire_lock(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        handle = open(path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise RunOwnershipError(
                f"{self.root}: another process is running in this bundle_root ({holder}); wait for it to end or "
                "stop it, or use another --bundle_root."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {host_name()}, since {_now()}\n")
        handle.flush()
        self._lock = handle
        _CLAIMED.add(self)

    def claim(self) -> RunOwner:
        """Lock an existing root and check its checkpoints against ``resume``/``overwrite``; writes nothing (a root
        that does not exist yet is locked by :meth:`start`, after the data checks, so that bad input leaves no
        folder behind). Raises :class:`RunOwnershipError` when the root is not free. On ranks other than 0 of a
        ``torchrun`` job this does nothing (rank 0 owns the root)."""
        if int(os.environ.get("RANK", "0")) > 0 or self.claimed:
            return self
        if not (self.root / LOCK_FILE).is_file():
            self._check()  # a new root, or one from before run records: nothing to lock yet
        else:
            self._lock_and_check()
        return self

    def _lock_and_check(self) -> None:
        self._acquire_lock()
        try:
            self._check()
        except BaseException:
            self.release()
            raise

    def _check(self) -> None:
        self._previous = read_run(self.root)
        self._existing = checkpoint_files(self.ckpt_dir)
        if self.resume and not self._existing:
            raise RunOwnershipError(f"{self.ckpt_dir}: no checkpoint to resume from; start a new run without --resume.")
        if not self.resume and self._existing and not self.overwrite:
            names = ", ".join(p.name for p in self._existing[:4]) + (", ..." if len(self._existing) > 4 else "")
            raise RunOwnershipError(
                f"{self.ckpt_dir} holds checkpoints of {_describe_run(self._previous)} ({names}): add --resume True "
                "to continue that run, --overwrite True to delete them and start afresh, or use another --bundle_root."
            )

    def start(self) -> RunOwner:
        """After :meth:`claim`: remove stale temporary files, delete the old checkpoints (``overwrite``), and write
        ``run.json`` (a new identity, or the resumed run's with this start appended)."""
        if int(os.environ.get("RANK", "0")) > 0:
            return self
        if not self.claimed:  # the root was new at claim time: lock it now, and check again under the lock
            self._lock_and_check()
        removed = clean_stale_temp_files(self.root, self.ckpt_dir, self.root / "eval")
        if removed:
            logger.warning("removed %d temporary file(s) left by a killed process: %s", len(removed),
                           ", ".join(p.name for p in removed))
        identity = {"host": host_name(), "pid": os.getpid(), "started": _now()}
        if self.resume:
            if self._previous is None:
                logger.warning("%s has no %s: adopting its checkpoints as a new run record", self.root, RUN_FILE)
                self.run = {"run_id": uuid.uuid4().hex[:12], **identity, "resumes": []}
            else:
                self.run = dict(self._previous)
                self.run["resumes"] = [*self._previous.get("resumes", []), identity]
            logger.info("resuming %s in %s", _describe_run(self.run), self.root)
        else:
            for path in self._existing:
                path.unlink(missing_ok=True)
            if self._existing:
                logger.warning("--overwrite: deleted %d checkpoint(s) of %s from %s", len(self._existing),
                               _describe_run(self._previous), self.ckpt_dir)
            self.run = {"run_id": uuid.uuid4().hex[:12], **identity, "resumes": []}
        self.run["settings"] = {**self.run.get("settings", {}), **self.settings}
        self.run["status"] = "running"
        self.record(**self._recorded)
        return self

    def attach(self, engine: Engine) -> None:
        """Run :meth:`start` when ``engine`` starts. Attach it before a checkpoint loader (handlers run in the
        order they were added): on resume the loader checks the run id that ``start`` reads from ``run.json``."""
        engine.add_event_handler(Events.STARTED, lambda _: self.start())

    def record(self, **entries: Any) -> None:
        """Add ``settings`` (merged) or other entries (``overrides=...``) to ``run.json``; before :meth:`start`
        (the root may not be locked yet) they are kept and written by it."""
        if not self.run or not self.claimed:
            for key, value in entries.items():
                self._recorded[key] = {**self._recorded.get(key, {}), **value} if key == "settings" else value
            return
        for key, value in entries.items():
            if key == "settings":
                self.run["settings"] = {**self.run.get("settings", {}), **value}
            else:
                self.run[key] = value
        write_json(self.root / RUN_FILE, self.run)

    def release(self, status: str | None = None, **entries: Any) -> None:
        """Record ``status`` (e.g. ``"finished"``, ``"failed"``) and ``entries`` (``error=...``) in a started run's
        ``run.json``, and drop the lock (also dropped when the process ends). A run refused before it started
        writes nothing."""
        if self._lock is None:
            return
        if status is not None and self.run:
            self.record(status=status, ended=_now(), **entries)
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
        finally:
            self._lock.close()
            self._lock = None

    def state_dict(self) -> dict[str, Any]:
        """Saved in every epoch checkpoint: the identity of the run that wrote it."""
        return {"run_id": self.run_id or ""}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Refuse a checkpoint written by another run (runs are never mixed), naming the foreign file(s) and the
        safe way out first (``--overwrite`` would delete this run's checkpoints too)."""
        theirs = state.get("run_id")
        if self.run_id and theirs and theirs != self.run_id:
            foreign = [p for p in checkpoint_files(self.ckpt_dir) if _run_id_of(p) == theirs]
            names = ", ".join(str(p) for p in foreign) or f"a checkpoint in {self.ckpt_dir}"
            raise RunOwnershipError(
                f"{names}: written by run {theirs}, but {self.root / RUN_FILE} records run {self.run_id} (the folder "
                f"mixes two runs). Move {'that file' if len(foreign) < 2 else 'those files'} out of {self.ckpt_dir} "
                f"and resume again to continue run {self.run_id}; only if neither run is worth keeping, start afresh "
                "with --overwrite True (it deletes every checkpoint there)."
            )


def _run_id_of(checkpoint: Path) -> str | None:
    """The run id stored in an epoch checkpoint (``None`` for ``model.pt`` or an unreadable file)."""
    try:
        content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable file is not the foreign one
        return None
    run = content.get("run") if isinstance(content, Mapping) else None
    return run.get("run_id") if isinstance(run, Mapping) else None
