"""Finding the checkpoints a training wrote (for resuming)."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["latest_checkpoint"]


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
