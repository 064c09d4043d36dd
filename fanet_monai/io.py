"""Atomic file writes: every file a later step reads (checkpoints, ``model.pt``, datalists, CSVs, exported models,
``run.json``) goes to a temporary file in the same folder, is flushed to disk and renamed into place, so a reader
sees the old file or the new one, never a truncated one. A process killed mid-write leaves a temporary file
``.NAME.PID.fanet-tmp``; :func:`clean_stale_temp_files` removes those of dead processes at the next start."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "TEMP_SUFFIX", "atomic_path", "atomic_write", "clean_stale_temp_files", "host_name", "pid_alive", "write_json",
]

TEMP_SUFFIX = ".fanet-tmp"


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[Any]:
    """Open a temporary file next to ``path`` for writing; on a clean exit flush it to disk and rename it to
    ``path`` (``os.replace``: atomic on POSIX and Windows). On an exception the temporary file is removed and
    ``path`` is untouched. The parent folder is created if needed.

    Example::

        with atomic_write("out.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(path)
    try:
        with open(temp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_write` for writers that take a file name (``torch.jit.save``, ``onnx.save``, image
    writers): yields the temporary path to write to, renamed to ``path`` on a clean exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(path)
    try:
        yield temp
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, content: Any) -> Path:
    """Write ``content`` as indented JSON to ``path`` atomically; returns the path."""
    with atomic_write(path, "w") as f:
        json.dump(content, f, indent=2)
        f.write("\n")
    return Path(path)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temp_files(*folders: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that :func:`atomic_write` left in ``folders`` (not recursive) when its process
    died mid-write; files of processes still alive are kept. Returns the removed paths."""
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for temp in folder.glob(f".*{TEMP_SUFFIX}"):
            try:
                pid = int(temp.name[: -len(TEMP_SUFFIX)].rsplit(".", 1)[1])
            except (IndexError, ValueError):
                pid = -1
            if pid != os.getpid() and (pid < 0 or not pid_alive(pid)):
                temp.unlink(missing_ok=True)
                removed.append(temp)
    return removed


def host_name() -> str:
    """This machine's name (for run identities and lock owners)."""
    return socket.gethostname()
