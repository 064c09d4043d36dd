"""Error types that tell the command line "the input is wrong" (exit code 2) apart from internal failures (1)."""

from __future__ import annotations

__all__ = ["InputError", "RunOwnershipError"]


class InputError(ValueError):
    """Bad input a person can fix (a file, a folder, an option); the message names it and says what to do."""


class RunOwnershipError(InputError):
    """A ``bundle_root`` is in use by another process, or holds another run's checkpoints."""
