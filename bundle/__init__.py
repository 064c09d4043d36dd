"""The FANet MONAI bundle (``configs/``, ``docs/``, ``scripts/``, ``models/``): the source of the bundle that the
fanet-monai wheel carries as the package ``fanet_monai.packaged_bundle`` (see ``setup.py``). This file only makes
the folder a package for that; MONAI's bundle tools read the folder as files and do not import it."""
