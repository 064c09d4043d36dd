"""Datalists: folders of images and masks, MONAI datalist JSON files."""

from fanet_monai.data.datalist import IMAGE_SUFFIXES, folder_datalist, load_datalist, split_items
from fanet_monai.data.synthetic import make_synthetic_dataset

__all__ = ["IMAGE_SUFFIXES", "folder_datalist", "load_datalist", "make_synthetic_dataset", "split_items"]
