"""The ``fanet`` console script and ``python -m fanet_monai``: start the command line, or say in two lines why it
cannot (a dependency missing or broken in this Python environment) instead of an import traceback. Errors after
start-up are the command line's own (:mod:`fanet_monai.cli.main`: one line, then where the traceback is)."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Run ``fanet`` with ``sys.argv``; exit code 1 when it cannot start."""
    try:
        from fanet_monai.cli.main import main as cli_main
    except ImportError as error:
        missing = getattr(error, "name", None)
        what = f"the package {missing!r} is missing or broken" if missing else str(error)
        print(f"fanet: cannot start: {what} ({error}).", file=sys.stderr)
        print(f"  reinstall fanet-monai with its dependencies into {sys.prefix}: pip install fanet-monai",
              file=sys.stderr)
        raise SystemExit(1) from None
    cli_main()
