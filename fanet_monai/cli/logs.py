"""Each ``fanet`` command's log file: where it goes, who may read it, and what never reaches it.

- **Where**: ``BUNDLE_ROOT/logs`` when the command's bundle root exists and is writable (``tail -f`` works from the
  start); otherwise a per-user folder ``$TMPDIR/fanet-logs-<uid>``, moved into ``BUNDLE_ROOT/logs`` at the end when
  the command created its root. When no folder can be used (a file in the way, another user's folder, no write
  permission) the command runs without a log file and says so in one line.
- **Who**: log folders are created ``0700`` and log files ``0600``: commands read images and DICOM, and a PACS
  command line may carry a URL.
- **What not**: everything written to the log (the command line first, then every line the command prints) and to
  the console passes through :func:`redact`: the user and password of a URL (``user:password@`` becomes ``***@``),
  the value of any option or ``key=value`` whose name holds ``password``, ``passwd``, ``secret``, ``token`` or
  ``api_key`` (``--password X``, ``--api_key=X``, ``token=X`` in a query), a bearer or basic ``Authorization``
  value, and the values of ``FANET_PACS_PASSWORD`` / ``FANET_PACS_TOKEN`` are replaced by ``***``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

__all__ = ["REDACTED", "LogFile", "log_to_console", "redact"]

REDACTED = "***"
_SECRET_NAME = r"[\w-]*(?:password|passwd|secret|token|api[_-]?key|apikey)[\w-]*"
_PATTERNS = (
    re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+(?=@)"),  # scheme://USER:PASSWORD@host
    re.compile(rf"(?P<keep>--{_SECRET_NAME}(?:=|\s+))(?!--)\S+", re.IGNORECASE),  # --password X, --token=X
    re.compile(rf"(?P<keep>[?&;]{_SECRET_NAME}=)[^&\s]+", re.IGNORECASE),  # ?access_token=X
    re.compile(r"(?P<keep>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE),  # Authorization headers
    re.compile(rf"(?P<keep>[\"']?{_SECRET_NAME}[\"']?\s*[:=]\s*[\"']?)[^\"'\s,}}]+", re.IGNORECASE),  # key: value
)
#: environment variables whose values are secrets wherever they appear
SECRET_ENVIRONMENT = ("FANET_PACS_PASSWORD", "FANET_PACS_TOKEN")


def redact(text: str) -> str:
    """``text`` with every secret it may hold replaced by ``***`` (see the module doc)."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group("keep") + REDACTED, text)
    for name in SECRET_ENVIRONMENT:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, REDACTED)
    return text


def _private_folder(folder: Path) -> bool:
    """Create ``folder`` (0700) if needed; ``True`` when it is a real folder of this user that it can write to."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and os.access(folder, os.W_OK | os.X_OK)


def _log_folder(root: Path | None) -> tuple[Path | None, str]:
    """The folder for a command's log, and a note when there is none."""
    if root is not None and root.is_dir() and os.access(root, os.W_OK):
        if _private_folder(root / "logs"):
            return root / "logs", ""
    fallback = Path(tempfile.gettempdir()) / f"fanet-logs-{os.getuid()}"
    if _private_folder(fallback):
        return fallback, ""
    return None, f"note: no log file for this command ({fallback} is not a folder this user can write to)"


class _RedactingTee:
    """A console stream that also writes to the log; both see only redacted text. The log gets whole lines (a
    secret is never split across two writes there); the console gets each write at once (progress bars)."""

    def __init__(self, stream: TextIO, log: TextIO | None) -> None:
        self.stream, self.log, self._pending = stream, log, ""

    def write(self, text: str) -> int:
        if self.log is not None and not self.log.closed:
            lines = (self._pending + text).split("\n")
            self._pending = lines.pop()
            for line in lines:
                self.log.write(redact(line) + "\n")
        self.stream.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        if self.log is not None and not self.log.closed:
            self.log.flush()

    def close_line(self) -> None:
        """Write what is left of an unfinished line to the log."""
        if self._pending and self.log is not None and not self.log.closed:
            self.log.write(redact(self._pending) + "\n")
        self._pending = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class LogFile:
    """The log of one command: ``with LogFile(name, root, argv) as log:`` sends ``sys.stdout``/``sys.stderr``
    through :func:`redact` to the console and to ``log.path`` (``None`` when there is none), then restores them.

    Args:
        name: the command (the file is ``NAME-YYYYmmdd-HHMMSS-PID.log``).
        root: the command's bundle root, or ``None``.
        argv: the command line, written (redacted) as the first line.
        stamp: the time stamp of the file name.
    """

    def __init__(self, name: str, root: Path | None, argv: list[str], stamp: str) -> None:
        self.root = root
        folder, self.note = _log_folder(root)
        self.path = folder / f"{name}-{stamp}-{os.getpid()}.log" if folder is not None else None
        self._argv = argv
        self._file: TextIO | None = None
        self._saved: tuple[TextIO, TextIO] | None = None

    def __enter__(self) -> LogFile:
        if self.note:
            print(self.note, file=sys.stderr)
        if self.path is not None:
            try:
                descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
                self._file = os.fdopen(descriptor, "a")
            except OSError as error:
                print(f"note: no log file for this command ({self.path}: {error.strerror})", file=sys.stderr)
                self.path = None
        if self._file is not None:
            self._file.write(redact(f"$ fanet {' '.join(self._argv)}") + "\n")
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _RedactingTee(sys.stdout, self._file), _RedactingTee(sys.stderr, self._file)
        return self

    @property
    def console(self) -> tuple[TextIO, TextIO]:
        """The real ``(stdout, stderr)``."""
        assert self._saved is not None
        return self._saved

    def write(self, text: str) -> None:
        """Write ``text`` (redacted) to the log only (a traceback)."""
        if self._file is not None and not self._file.closed:
            self._file.write(redact(text))

    def close(self) -> Path | None:
        """Restore the console streams, close the file and move it into ``root/logs`` when the root now exists (a
        command that failed before creating its root leaves nothing there). Returns where the log is."""
        if self._saved is not None:
            for tee in (sys.stdout, sys.stderr):
                if isinstance(tee, _RedactingTee):
                    tee.close_line()
            sys.stdout, sys.stderr = self._saved
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self.path is None or self.root is None or not self.root.is_dir() or self.path.parent == self.root / "logs":
            return self.path
        if not _private_folder(self.root / "logs"):
            return self.path
        try:
            target = self.root / "logs" / self.path.name
            shutil.move(str(self.path), target)
            self.path = target
        except OSError:
            pass
        return self.path

    def __exit__(self, *exc: Any) -> None:
        self.close()


def log_to_console() -> None:
    """Log to the console for commands that run no bundle ``logging.conf`` of their own (DICOM, PACS)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    for noisy in ("highdicom", "dicomweb_client"):  # a line per copied module / per request
        logging.getLogger(noisy).setLevel(logging.WARNING)
