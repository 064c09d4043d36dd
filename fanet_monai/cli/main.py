"""Running a ``fanet`` command: help, option checks, the log file, errors and exit codes (around ``fire``).

Exit codes (:data:`EXIT_CODES`): 0 done; 1 internal failure; 2 bad input (a file, a folder, an option: nothing
was done); 3 done except for the inputs it names (``infer --skip_bad True`` skipped images, ``dicom_infer`` /
``pacs`` sources that failed); 130 interrupted. An error prints the message (which names the file and what to do)
and where the traceback is (``--debug True`` prints it; it is always in the command's log file).
"""

from __future__ import annotations

import datetime
import difflib
import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterable, Sequence

import fire

from fanet_monai.cli.commands import FanetCLI
from fanet_monai.cli.logs import LogFile, redact
from fanet_monai.cli.options import UsageError, check_command_line, command_help, overview, parameters
from fanet_monai.errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_PARTIAL, InputError
from fanet_monai.run import release_claims

__all__ = ["EXIT_CODES", "commands", "exit_code", "main", "run"]

EXIT_CODES = {
    0: "done",
    EXIT_INTERNAL: "internal failure (a bug or the environment: see the log)",
    EXIT_INPUT: "bad input or option: nothing was done",
    EXIT_PARTIAL: "done except for the inputs it names (skipped or failed)",
    EXIT_INTERRUPTED: "interrupted",
}
#: exceptions that mean "the input is wrong" (exit code 2); everything else is an internal failure (1)
INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                FileExistsError, KeyError)


def commands() -> dict[str, Callable]:
    """The ``fanet`` commands: the public methods of :class:`FanetCLI` (looked up at each call)."""
    return {name: member for name, member in inspect.getmembers(FanetCLI, inspect.isfunction)
            if not name.startswith("_")}


def root_cause(error: BaseException) -> BaseException:
    """The exception to report: the outermost :class:`~fanet_monai.errors.InputError` of the ``__cause__`` chain
    (its message names the file and what to do), else the innermost cause (MONAI wraps errors raised inside config
    expressions in a ``RuntimeError``)."""
    chain = [error]
    while chain[-1].__cause__ is not None and len(chain) < 50:
        chain.append(chain[-1].__cause__)
    return next((e for e in chain if isinstance(e, InputError)), chain[-1])


def exit_code(error: BaseException) -> int:
    """2 for bad input (a file, a folder, an option), 1 for an internal failure."""
    return EXIT_INPUT if isinstance(root_cause(error), INPUT_ERRORS) else EXIT_INTERNAL


def _bundle_root_arg(method: Callable, args: Sequence[str]) -> Path | None:
    """The ``--bundle_root`` of a command that has one (its default when not given), else ``None``."""
    params = {p.name: p for p in parameters(method)[0]}
    if "bundle_root" not in params:
        return None
    root = params["bundle_root"].default
    for i, token in enumerate(args):
        if token == "--bundle_root" and i + 1 < len(args):
            root = args[i + 1]
        elif token.startswith("--bundle_root="):
            root = token.split("=", 1)[1]
    return None if root in (None, inspect.Parameter.empty) else Path(str(root))


def _pop_debug(args: list[str]) -> bool:
    """Remove ``--debug [True|False]`` / ``--debug=VALUE`` from ``args``; returns its value."""
    for i, token in enumerate(args):
        if token.startswith("--debug="):
            del args[i]
            return token.split("=", 1)[1].lower() in ("true", "1", "yes")
        if token == "--debug":
            has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            value = args[i + 1] if has_value else "True"
            del args[i: i + 2 if has_value else i + 1]
            return value.lower() in ("true", "1", "yes")
    return False


def run(argv: Iterable[str] | None = None) -> int:
    """Run ``fanet`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code (see the module doc)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _pop_debug(args)
    known = commands()
    if not args or args[0] in ("-h", "--help", "help"):
        print(overview(FanetCLI.__doc__ or "", known))
        return 0
    name, rest = args[0], args[1:]
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"fanet: unknown command {name!r}{hint}; commands: {', '.join(known)}.", file=sys.stderr)
        return EXIT_INPUT
    method = known[name]
    try:  # the help and the option checks read the bundle's configs: a missing bundle is an input error here too
        if "--help" in rest or "-h" in rest:
            print(command_help(name, method))
            return 0
        check_command_line(name, method, rest)
    except UsageError as error:
        print(f"fanet {name}: {error}", file=sys.stderr)
        return EXIT_INPUT
    except INPUT_ERRORS as error:
        print(redact(f"fanet {name}: error: {error}"), file=sys.stderr)
        print("  (nothing was run)", file=sys.stderr)
        return EXIT_INPUT
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log = LogFile(name, _bundle_root_arg(method, rest), args, stamp)
    with log:
        try:
            fire.Fire(FanetCLI, command=args, name="fanet")
            return 0
        except SystemExit as error:  # a command's own exit code (3: partial), or fire's usage errors
            return error.code if isinstance(error.code, int) else EXIT_INPUT
        except KeyboardInterrupt:
            print(f"fanet {name}: interrupted", file=log.console[1])
            return EXIT_INTERRUPTED
        except BaseException as error:  # noqa: BLE001 - reported in one place, with the right exit code
            log.write(traceback.format_exc())
            cause = root_cause(error)
            message = str(cause).strip() or type(cause).__name__
            if debug:
                traceback.print_exc(file=log.console[1])
            code = exit_code(error)
            kind = "error" if code == EXIT_INPUT else f"internal error ({type(cause).__name__})"
            kept = log.close()
            print(redact(f"fanet {name}: {kind}: {message}"), file=sys.stderr)
            where = f"see {kept}" if kept is not None else "there is no log file"
            print(f"  (traceback: add --debug True, or {where})", file=sys.stderr)
            return code
        finally:
            release_claims()


def main() -> None:
    """The ``fanet`` console script."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run())
