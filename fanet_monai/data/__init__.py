"""Data: image files and readers, datalists, checks, dataset layouts, input transforms, augmentation, synthetic
data and offline expansion."""

from fanet_monai.data.checks import DataReport, check_datalist, check_items
from fanet_monai.data.datalist import SPLIT_MODES, folder_datalist, load_datalist, split_items
from fanet_monai.data.files import IMAGE_SUFFIXES, NIFTI_SUFFIXES, DataCheckError
from fanet_monai.data.images import image_datalist, mask_output_ext
from fanet_monai.data.layouts import LAYOUTS, prepare
from fanet_monai.data.readers import BitmapReader
from fanet_monai.data.synthetic import make_synthetic_dataset, make_thin_structure_dataset
from fanet_monai.data.synthetic_structures import (
    VOLUME_KINDS,
    make_blob_volume,
    make_tube_volume,
    make_vessel_dataset,
    make_vessel_image,
    make_volume_dataset,
)

__all__ = [
    "BitmapReader",
    "DataCheckError",
    "DataReport",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "NIFTI_SUFFIXES",
    "SPLIT_MODES",
    "VOLUME_KINDS",
    "check_datalist",
    "check_items",
    "folder_datalist",
    "image_datalist",
    "load_datalist",
    "make_blob_volume",
    "make_synthetic_dataset",
    "make_thin_structure_dataset",
    "make_tube_volume",
    "make_vessel_dataset",
    "make_vessel_image",
    "make_volume_dataset",
    "mask_output_ext",
    "prepare",
    "split_items",
]
