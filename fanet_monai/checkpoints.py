"""Checkpoints that survive kills and resumes: atomic writes, the best-metric state kept, a broken newest checkpoint
skipped for the previous intact one.

Built on ignite's public ``Checkpoint`` (which MONAI's ``CheckpointSaver`` wraps) with a save handler of our own,
so nothing here depends on MONAI internals:

- :class:`AtomicDiskSaver` writes through :func:`fanet_monai.io.atomic_write` (MONAI's handler writes in place and,
  for a fixed file name such as ``model.pt``, deletes the old file before writing the new one: a kill in between
  left a missing or 0-byte ``model.pt``).
- :class:`EpochCheckpointSaver`: ``checkpoint_epoch=N.pt`` every ``save_interval`` epochs, the newest ``n_saved``
  kept. Its own list of kept files is saved in each checkpoint (ignite's ``include_self``), so after a resume the
  checkpoints from before it are pruned as training goes on.
- :class:`BestMetricSaver`: ``model.pt``, the network at the best validation key metric. Its state (the best score)
  is saved in every epoch checkpoint, so the first validation after a resume does not overwrite a better
  ``model.pt``.
- :class:`ResumedHyperparameters`: on resume, the optimizer's and scheduler's settings given now, not the ones the
  checkpoint restored.
- :func:`latest_intact_checkpoint` picks the newest epoch checkpoint that loads, warning with the name of each one
  that does not; :func:`resume_objects` limits the objects to restore to those the checkpoint holds.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler

from fanet_monai.errors import InputError
from fanet_monai.io import atomic_write

__all__ = [
    "AtomicDiskSaver",
    "BestMetricSaver",
    "EpochCheckpointSaver",
    "ResumedHyperparameters",
    "checked_checkpoint",
    "model_load_dict",
    "latest_checkpoint",
    "latest_intact_checkpoint",
    "load_checkpoint",
    "resume_objects",
    "without_model_selection",
]

logger = logging.getLogger(__name__)

#: key of an :class:`EpochCheckpointSaver`'s own state in its checkpoints (ignite's ``include_self`` name)
SAVER_KEY = "checkpointer"


class AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler writing ``torch.save`` output atomically into ``dirname`` (rank 0 only).

    Args:
        dirname: folder of the checkpoints (created when needed).
        filename: a fixed file name (e.g. ``model.pt``) used instead of ignite's; then ``remove`` of the old file is
            a no-op, since the new one replaces it atomically.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        self.dirname = Path(dirname)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != 0:
            return
        with atomic_write(self.dirname / (self.filename or filename)) as f:
            torch.save(checkpoint, f)

    def remove(self, filename: str) -> None:
        if self.filename is not None or idist.get_rank() != 0:
            return
        (self.dirname / filename).unlink(missing_ok=True)


class EpochCheckpointSaver:
    """``checkpoint_epoch=N.pt`` (all of ``save_dict``) every ``save_interval`` epochs; the newest ``n_saved`` kept.

    Ignite deletes the oldest kept checkpoint *before* it writes the next, so ``n_saved`` must be at least 2: then a
    kill at any moment leaves at least one complete checkpoint. The kept list is stored in each checkpoint under
    ``"checkpointer"``; restore it (:meth:`load_state_dict`, e.g. through MONAI's ``CheckpointLoader``) to prune the
    checkpoints from before a resume.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        n_saved: int = 2,
        save_interval: int = 1,
    ) -> None:
        if n_saved is not None and n_saved < 2:
            raise ValueError(
                f"n_saved={n_saved}: ignite removes the oldest checkpoint before writing the next, so a kill while "
                "saving would leave no complete checkpoint; keep n_saved >= 2."
            )
        self.save_interval = int(save_interval)
        self.checkpoint = Checkpoint(
            to_save=dict(save_dict),
            save_handler=AtomicDiskSaver(save_dir),
            score_function=lambda engine: engine.state.epoch,
            score_name="epoch",
            n_saved=n_saved,
            include_self=True,
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.checkpoint)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.checkpoint.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.checkpoint.load_state_dict(state)


class BestMetricSaver:
    """``model.pt``: ``save_dict`` (normally ``{"model": network}``, saved as a bare state dict) whenever the
    evaluator's key metric beats the best so far; written atomically.

    Attach it to the evaluator. Put the saver itself into the training checkpoint objects: its state is the best
    score, restored on resume (and copied to the evaluator's ``state.best_metric``).

    Args:
        save_dir: folder of the file.
        save_dict: objects to save.
        filename: the file name.
        key_metric_name: metric of ``engine.state.metrics``; default: the evaluator's key metric.
        negative_sign: lower is better (the score is ``-metric``).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "model.pt",
        key_metric_name: str | None = None,
        negative_sign: bool = False,
    ) -> None:
        self.key_metric_name = key_metric_name
        self.sign = -1.0 if negative_sign else 1.0
        self.checkpoint = Checkpoint(
            to_save=dict(save_dict),
            save_handler=AtomicDiskSaver(save_dir, filename),
            score_function=self._score,
            score_name="key_metric",
            n_saved=1,
        )
        self._engine: Engine | None = None
        self.best_epoch = 0  # epoch of the best score (0: none yet)

    def _score(self, engine: Engine) -> float:
        name = self.key_metric_name or engine.state.key_metric_name
        return self.sign * float(engine.state.metrics[name])

    @property
    def best_score(self) -> float | None:
        """The best key metric saved so far (``None`` before the first save)."""
        saved = self.checkpoint.state_dict()["_saved"]
        return self.sign * float(saved[-1][0]) if saved else None

    def attach(self, engine: Engine) -> None:
        self._engine = engine
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save_if_best)
        self._sync_engine()

    def _save_if_best(self, engine: Engine) -> None:
        before = self.checkpoint.state_dict()["_saved"]
        self.checkpoint(engine)
        if self.checkpoint.state_dict()["_saved"] != before:
            self.best_epoch = int(engine.state.epoch)

    def _sync_engine(self) -> None:
        """Copy the restored best score to a MONAI evaluator (its "Got new best metric" bookkeeping)."""
        state = getattr(self._engine, "state", None)
        if self.best_score is not None and hasattr(state, "best_metric"):
            state.best_metric = self.best_score
            state.best_metric_epoch = self.best_epoch

    def state_dict(self) -> dict[str, Any]:
        return {**self.checkpoint.state_dict(), "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.checkpoint.load_state_dict({"_saved": state["_saved"]})
        self.best_epoch = int(state.get("best_epoch", 0))
        self._sync_engine()


class ResumedHyperparameters:
    """On resume, apply the optimizer's and LR scheduler's settings as configured now over the restored state.

    Loading a checkpoint puts back the optimizer's param groups (learning rate, betas, weight decay...) and the
    scheduler's settings (patience, factor...) as they were when it was written: a setting changed for the resumed
    run would silently not apply. Attach this after the ``CheckpointLoader`` (both run on ``STARTED``):

    - every setting but the learning rate (which the scheduler lowers during training): the configured value
      wherever it differs from the restored one;
    - the learning rate: the configured one when it differs from ``started_learning_rate``, the rate the run was
      started with (``run.json``) — so an explicit ``--learning_rate`` applies, while a resume without one keeps
      the rate the scheduler had reached;
    - the feedback cache's update policy (``--feedback_cache#update_policy``).

    Each change is logged (old → new).

    Args:
        optimizer: the optimizer, built from the current configuration (snapshot taken here, before loading).
        lr_scheduler: the scheduler, likewise (optional).
        started_learning_rate: the run's recorded learning rate; ``None``: the learning rate is left as restored.
        feedback_cache: the feedback cache, whose restored ``update_policy`` is set back to the configured one
            (optional).
    """

    #: scheduler attributes that are settings, not training state (``best``, counters, ``last_epoch``)
    SCHEDULER_SETTINGS = ("factor", "min_lrs", "patience", "cooldown", "threshold", "threshold_mode", "eps")

    def __init__(self, optimizer: torch.optim.Optimizer, lr_scheduler: Any = None,
                 started_learning_rate: float | None = None, feedback_cache: Any = None) -> None:
        self.optimizer = optimizer
        self.groups = [{k: v for k, v in g.items() if k not in ("params", "initial_lr")}
                       for g in optimizer.param_groups]
        self.lr_scheduler = lr_scheduler
        self.scheduler_settings = {k: getattr(lr_scheduler, k) for k in self.SCHEDULER_SETTINGS
                                   if hasattr(lr_scheduler, k)}
        self.started_learning_rate = started_learning_rate
        self.feedback_cache = feedback_cache
        self.update_policy = getattr(feedback_cache, "update_policy", None)
        self.changes: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        changes = []
        lr_given = self.started_learning_rate is not None and self.groups and not (
            float(self.groups[0]["lr"]) == float(self.started_learning_rate))
        for index, (group, configured) in enumerate(zip(self.optimizer.param_groups, self.groups)):
            for key, value in configured.items():
                if (key == "lr" and not lr_given) or group.get(key) == value:
                    continue
                changes.append(f"optimizer param group {index} {key}: {group.get(key)} (checkpoint) -> {value}")
                group[key] = value
        for key, value in self.scheduler_settings.items():
            if getattr(self.lr_scheduler, key) != value:
                changes.append(f"lr_scheduler {key}: {getattr(self.lr_scheduler, key)} (checkpoint) -> {value}")
                setattr(self.lr_scheduler, key, value)
        restored = getattr(self.feedback_cache, "update_policy", None)
        if restored != self.update_policy:
            self.feedback_cache.commit()  # staged masks become the state the new policy starts from
            self.feedback_cache.update_policy = self.update_policy
            changes.append(f"feedback_cache update_policy: {restored} (checkpoint) -> {self.update_policy}")
        for line in changes:
            logger.info("resume: %s", line)
        self.changes = changes


def without_model_selection(evaluator: Engine) -> Engine:
    """Stop a MONAI evaluator from tracking its key metric as a "best" (and logging "Got new best metric"): right
    for a standalone evaluation, which selects no model. Returns the evaluator."""
    evaluator.metric_cmp_fn = lambda current, best: False
    evaluator.state.best_metric_epoch = 0  # MONAI logs the first value as a new best when this is -1
    return evaluator


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and what to do.

    Raises:
        InputError: missing, empty or truncated (a kill while it was written?), or refused by the weights-only
            loader (it holds objects other than tensors and plain containers; not loaded, for safety).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found; train first (fanet train ... --bundle_root) or pass the "
                         "right --bundle_root / --ckpt_path.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty checkpoint file (a process killed while writing it?); retrain or restore it.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - every loader failure means "this file cannot be used"
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise InputError(
                f"{path}: refused by the weights-only loader: it holds objects other than tensors (not a checkpoint "
                "of this project, or crafted); it was not loaded, for safety."
            ) from error
        reason = str(error).split(". ")[0]
        raise InputError(
            f"{path}: unreadable or truncated checkpoint ({type(error).__name__}: {reason}); retrain or restore it."
        ) from error


#: top-level keys of checkpoints already loaded by this process (path -> keys), so configs do not load them twice
_KEYS: dict[str, set] = {}


def checked_checkpoint(path: str | os.PathLike) -> str:
    """``path`` after checking that it loads (see :func:`load_checkpoint`); for bundle configs."""
    content = load_checkpoint(path)
    _KEYS[str(path)] = set(content) if isinstance(content, Mapping) else set()
    return str(path)


def model_load_dict(path: str | os.PathLike, network: Any) -> dict[str, Any]:
    """``CheckpointLoader``'s ``load_dict`` for evaluating ``path``: ``{"network": network}`` for a training
    checkpoint (``checkpoint_epoch=N.pt`` holds the weights under ``"network"``), else ``{"model": network}``
    (``model.pt``, a bare state dict). So the evaluation bundle scores any epoch, not only the best one."""
    keys = _KEYS.get(str(path))
    if keys is None:
        content = load_checkpoint(path)
        keys = set(content) if isinstance(content, Mapping) else set()
    return {"network": network} if "network" in keys else {"model": network}


def _epoch_checkpoints(ckpt_dir: str | os.PathLike, prefix: str) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"^{re.escape(prefix)}_epoch=(\d+)\.pt$")
    folder = Path(ckpt_dir)
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = pattern.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str:
    """Path of the newest epoch checkpoint ``{prefix}_epoch=N.pt`` in ``ckpt_dir`` (by epoch number).

    Raises ``FileNotFoundError`` naming the folder when there is none (nothing to resume from).
    """
    found = _epoch_checkpoints(ckpt_dir, prefix)
    if not found:
        raise FileNotFoundError(f"{Path(ckpt_dir)}: no '{prefix}_epoch=N.pt' checkpoint to resume from.")
    return str(found[0][1])


def latest_intact_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str:
    """The newest epoch checkpoint in ``ckpt_dir`` that loads; each one that does not is named in a warning and
    skipped for the previous one.

    Raises:
        FileNotFoundError: no epoch checkpoint at all.
        InputError: none of them loads (each named).
    """
    found = _epoch_checkpoints(ckpt_dir, prefix)
    if not found:
        raise FileNotFoundError(f"{Path(ckpt_dir)}: no '{prefix}_epoch=N.pt' checkpoint to resume from.")
    problems = []
    for _, path in found:
        try:
            content = load_checkpoint(path)
        except InputError as error:
            problems.append(str(error))
            message = f"{error} Skipped for the previous checkpoint."
            logger.warning(message)
            warnings.warn(message, UserWarning, stacklevel=2)
            continue
        _KEYS[str(path)] = set(content) if isinstance(content, Mapping) else set()
        return str(path)
    raise InputError(f"{Path(ckpt_dir)}: no epoch checkpoint loads:\n  " + "\n  ".join(problems))


def resume_objects(path: str | os.PathLike | None, objects: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``objects`` that the checkpoint ``path`` holds (for ``CheckpointLoader``'s ``load_dict``);
    those it lacks (a checkpoint from an older version) are named in a warning and keep their fresh state."""
    if path is None:
        return dict(objects)
    keys = _KEYS.get(str(path))
    if keys is None:
        content = load_checkpoint(path)
        keys = set(content) if isinstance(content, Mapping) else set()
    missing = sorted(set(objects) - keys)
    if missing:
        warnings.warn(f"{path} holds no {missing}: they start fresh (a checkpoint of an older version).", UserWarning,
                      stacklevel=2)
    return {k: v for k, v in objects.items() if k in keys}
