"""The bundle's ``scripts`` package, as in MONAI model-zoo bundles: the code the configs import.

All of that code is the ``fanet_monai`` package; there is no second copy in this repository. In the repository the
configs import the installed package. A bundle written by ``fanet package OUT`` is self-contained: the package's
source is copied to ``OUT/scripts/fanet_monai`` and every config's ``imports`` starts with ``"$import scripts"``.
MONAI Label and ``python -m monai.bundle run`` (run from the bundle folder) put the bundle root on ``sys.path``;
importing this module then puts this folder first on ``sys.path``, so ``fanet_monai`` (and the configs'
``fanet_monai.*`` targets) resolve to the bundled copy — the code the bundle's weights were trained with — even
where another ``fanet_monai`` is installed (unless one was imported earlier in the same process).
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_here, "fanet_monai")) and _here not in sys.path:
    sys.path.insert(0, _here)
