"""Error types that tell the command line "the input is wrong" (exit code 2) apart from internal failures (1)."""

from __future__ import annotations

__all__ = ["EXIT_INPUT", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_PARTIAL", "InputError", "RunOwnershipError"]

#: exit codes of the ``fanet`` commands (README "Operating it")
EXIT_INTERNAL = 1  # an internal failure: a bug or the environment (the log has the traceback)
EXIT_INPUT = 2  # bad input or option: nothing was done
EXIT_PARTIAL = 3  # done, except for the inputs it names (skipped images, failed DICOM sources)
EXIT_INTERRUPTED = 130


class InputError(ValueError):
    """Bad input a person can fix (a file, a folder, an option); the message names it and says what to do."""


class RunOwnershipError(InputError):
    """A ``bundle_root`` is in use by another process, or holds another run's checkpoints."""
