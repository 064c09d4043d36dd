"""Progress of long evaluation loops as log lines (validation inside training, ``evaluate``, ``infer``): a line at
least every ``interval`` seconds and one at the end, which also works where a terminal bar does not (logs, CI,
notebooks). Training iterations keep ignite's ``ProgressBar``."""

from __future__ import annotations

import logging
import time
from typing import Callable

from ignite.engine import Engine, Events

__all__ = ["ProgressLogger"]

logger = logging.getLogger(__name__)


class ProgressLogger:
    """Log ``"<name>: i/N batches (p %), t s elapsed, ~r s left"`` at most every ``interval`` seconds and a summary
    when the loop completes (with ``done`` appended, e.g. where the outputs went).

    Args:
        name: what runs ("validation", "evaluation", "inference").
        interval: seconds between lines; the first line comes after ``interval`` seconds (short loops print only the
            summary).
        done: text added to the final line (e.g. ``"masks written to out/"``).
        clock: time source (tests).
    """

    def __init__(self, name: str, interval: float = 10.0, done: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.interval = float(interval)
        self.done = done
        self.clock = clock
        self.lines: list[str] = []  # what was logged (for the caller and tests)
        self._start = self._last = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _log(self, line: str) -> None:
        self.lines.append(line)
        logger.info(line)

    def _started(self, engine: Engine) -> None:
        self._start = self._last = self.clock()

    def _iteration(self, engine: Engine) -> None:
        now = self.clock()
        if now - self._last < self.interval:
            return
        self._last = now
        total = engine.state.epoch_length
        done = (engine.state.iteration - 1) % total + 1 if total else engine.state.iteration
        elapsed = now - self._start
        line = f"{self.name}: {done}/{total or '?'} batches"
        if total:
            left = elapsed / done * (total - done)
            line += f" ({100 * done / total:.0f} %), {elapsed:.0f} s elapsed, ~{left:.0f} s left"
        self._log(line)

    def _completed(self, engine: Engine) -> None:
        total = engine.state.epoch_length
        line = f"{self.name}: {total} batches done in {self.clock() - self._start:.1f} s"
        self._log(line + (f"; {self.done}" if self.done else ""))
