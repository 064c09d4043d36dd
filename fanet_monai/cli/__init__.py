"""``fanet`` command line (``python -m fanet_monai``): thin wrappers over the bundle configs, with ``fire``.

- :mod:`~fanet_monai.cli.commands`: the commands (:class:`FanetCLI`, one method each);
- :mod:`~fanet_monai.cli.main`: running one — help, option checks, log file, errors, exit codes;
- :mod:`~fanet_monai.cli.options`: help texts and option checks (names, arguments, value types and ranges);
- :mod:`~fanet_monai.cli.logs`: the log file (where, its permissions, redaction of secrets);
- :mod:`~fanet_monai.cli.settings`: a run's stored settings as the defaults of the commands that use it;
- :mod:`~fanet_monai.cli.configs`: which bundle configs a command runs, and their ids.
"""

from fanet_monai.cli.commands import FanetCLI
from fanet_monai.cli.configs import bundle_command
from fanet_monai.cli.main import main, run

__all__ = ["FanetCLI", "bundle_command", "main", "run"]
