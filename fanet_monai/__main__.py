"""``python -m fanet_monai``: the ``fanet`` command line."""

from fanet_monai.console import main

main()
