"""fanet-monai: FANet (Feedback Attention Network, Tomar et al., IEEE TNNLS 2022) as a MONAI bundle."""

from fanet_monai.networks import FANet

__version__ = "0.1.0"

__all__ = ["FANet", "__version__"]
