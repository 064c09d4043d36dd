"""Datalists: folders of images and masks, MONAI datalist JSON files, image-only lists for inference."""

from fanet_monai.data.checks import DataCheckError, DataReport, check_datalist, check_items
from fanet_monai.data.datalist import IMAGE_SUFFIXES, SPLIT_MODES, folder_datalist, load_datalist, split_items
from fanet_monai.data.images import NIFTI_SUFFIXES, image_datalist, mask_output_ext
from fanet_monai.data.layouts import LAYOUTS, prepare
from fanet_monai.data.readers import BitmapReader
from fanet_monai.data.synthetic import make_synthetic_dataset

__all__ = [
    "BitmapReader",
    "DataCheckError",
    "DataReport",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "NIFTI_SUFFIXES",
    "SPLIT_MODES",
    "check_datalist",
    "check_items",
    "folder_datalist",
    "image_datalist",
    "load_datalist",
    "make_synthetic_dataset",
    "mask_output_ext",
    "prepare",
    "split_items",
]
