"""Packages of the fanet-monai wheel (everything else is in ``pyproject.toml``).

The MONAI bundle ships inside the wheel: the repository's ``bundle/`` (its only source) becomes the package
``fanet_monai.packaged_bundle``, whose configs, docs and license are package data, found at run time with
``importlib.resources`` (:func:`fanet_monai.bundle.packaged_bundle_dir`). ``pyproject.toml`` cannot map a folder
outside the package tree into it, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["fanet_monai*"]) + ["fanet_monai.packaged_bundle",
                                                        "fanet_monai.packaged_bundle.scripts"],
    package_dir={"fanet_monai.packaged_bundle": "bundle"},
    package_data={"fanet_monai.packaged_bundle": ["configs/*.json", "configs/*.conf", "docs/*", "LICENSE",
                                                   "large_files.yml"]},
)
