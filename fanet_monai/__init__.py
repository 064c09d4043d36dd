"""fanet-monai: FANet (Feedback Attention Network, Tomar et al., IEEE TNNLS 2022) as a MONAI bundle.

``fanet_monai.FANet`` is imported when first used, so that importing the package (the ``fanet`` console script does)
needs no third-party package: a missing one is then reported in one line (:mod:`fanet_monai.console`).
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["FANet", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "FANet":
        from fanet_monai.networks import FANet

        return FANet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
