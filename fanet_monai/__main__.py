"""``python -m fanet_monai``: the ``fanet`` command line."""

from fanet_monai.cli import main

main()
