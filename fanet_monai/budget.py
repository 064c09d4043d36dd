"""A training budget in seconds (equal wall-clock comparisons between networks of different cost)."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events

__all__ = ["TrainingTimeBudget"]


class TrainingTimeBudget:
    """Stop training at an epoch boundary before the next epoch would end past ``seconds`` of training.

    Unlike :class:`ignite.handlers.TimeLimit`, which stops in the middle of an epoch (so that epoch is never
    validated or checkpointed), the run stops after the last epoch that fits: at the end of each epoch, if the time
    so far plus the mean epoch time exceeds the budget, the trainer terminates (after this epoch's validation and
    checkpoint handlers, which run on the same event). The first epoch always runs. ``seconds=None`` disables it,
    so a bundle can always list the handler.

    Args:
        seconds: training wall-clock budget (validation inside training included), or ``None``.
    """

    def __init__(self, seconds: float | None = None) -> None:
        if seconds is not None and float(seconds) <= 0:
            raise ValueError(f"seconds must be > 0 or None, got {seconds}.")
        self.seconds = None if seconds is None else float(seconds)
        self.logger = logging.getLogger(__name__)
        self._start = 0.0
        self._epochs = 0

    def attach(self, engine: Engine) -> None:
        if self.seconds is None:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()
        self._epochs = 0

    def _check(self, engine: Engine) -> None:
        self._epochs += 1
        elapsed = time.perf_counter() - self._start
        if elapsed + elapsed / self._epochs > self.seconds:
            self.logger.info(
                f"time budget: stopping after epoch {engine.state.epoch} ({elapsed:.1f} s of {self.seconds:.1f} s)."
            )
            engine.terminate()
