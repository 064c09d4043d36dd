"""Epoch checkpoints for resuming: written atomically, found by epoch number."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver", "latest_checkpoint"]


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose epoch checkpoints (``save_interval``) are written atomically.

    MONAI writes checkpoints in place (``DiskSaver(atomic=False)``, to keep group-readable file permissions), so a
    process killed while saving leaves a truncated ``checkpoint_epoch=N.pt`` that a resume would then try to load.
    Here the epoch checkpoints go to a temporary file in the same folder and are renamed into place. Ignite deletes
    the oldest kept checkpoint *before* it writes the new one, so ``n_saved`` must be at least 2: then a kill at any
    moment leaves at least one complete epoch checkpoint. Same arguments as ``CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        interval = self._interval_checkpoint
        if interval is not None:
            if interval.n_saved is not None and interval.n_saved < 2:
                raise ValueError(
                    f"n_saved={interval.n_saved}: ignite removes the oldest checkpoint before writing the next, so a "
                    "kill while saving would leave no complete checkpoint; keep n_saved >= 2."
                )
            interval.save_handler = DiskSaver(self.save_dir, require_empty=False, atomic=True)


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str:
    """Path of the newest epoch checkpoint ``{prefix}_epoch=N.pt`` that MONAI's ``CheckpointSaver`` wrote.

    Raises ``FileNotFoundError`` naming the folder when there is none (nothing to resume from).
    """
    pattern = re.compile(rf"^{re.escape(prefix)}_epoch=(\d+)\.pt$")
    found = []
    folder = Path(ckpt_dir)
    if folder.is_dir():
        for path in folder.iterdir():
            match = pattern.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    if not found:
        raise FileNotFoundError(f"{folder}: no '{prefix}_epoch=N.pt' checkpoint to resume from.")
    return str(max(found)[1])
