"""DICOM in, DICOM SEG out: a MONAI reader for 2-D DICOM images, an in-process bundle predictor, a highdicom SEG
writer, and a DICOMweb (QIDO/WADO/STOW) client loop for PACS such as Orthanc."""

from fanet_monai.dicom.reader import DicomReader, SourceError, check_source

__all__ = ["DicomReader", "SourceError", "check_source"]
