"""Data: image files and readers, datalists, checks (2-D images and volumes), dataset layouts, input transforms,
augmentation, synthetic data and offline expansion."""

from fanet_monai.data.checks import DataReport, check_datalist, check_items
from fanet_monai.data.datalist import SPLIT_MODES, folder_datalist, load_datalist, split_items
from fanet_monai.data.files import IMAGE_SUFFIXES, NIFTI_SUFFIXES, VOLUME_SUFFIXES, DataCheckError
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
from fanet_monai.data.volumes import (
    VolumeReport,
    check_volume_datalist,
    check_volume_items,
    is_volume_folder,
    load_volume_datalist,
    volume_folder_datalist,
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
    "VOLUME_SUFFIXES",
    "VolumeReport",
    "check_datalist",
    "check_items",
    "check_volume_datalist",
    "check_volume_items",
    "folder_datalist",
    "image_datalist",
    "is_volume_folder",
    "load_datalist",
    "load_volume_datalist",
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
    "volume_folder_datalist",
]
