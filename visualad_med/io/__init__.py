"""Scans in, results out: find scans in a folder, load them as volumes, write results in their geometry.

Public API: :func:`find_scans` -> :class:`ScanSource`; :func:`load_scan` -> ``MetaTensor``
``(1, X, Y, Z)`` with a RAS affine, or :class:`ScanLoadError`; :class:`DicomSeries` to go from a
slice of a loaded DICOM volume back to its source dataset; writers :func:`write_nifti`,
:func:`write_seg_nrrd`, :func:`write_dicom_seg`, :func:`write_json`, :func:`write_summary_csv`.
"""

from .dicom_series import MAX_GAP_SLICES, DicomSeries, read_series
from .discover import find_scans
from .load import MAX_VOXELS, load_scan
from .sitk_reader import SimpleITKReader
from .sources import ScanLoadError, ScanSource
from .writers import write_dicom_seg, write_json, write_nifti, write_seg_nrrd, write_summary_csv

__all__ = [
    "MAX_GAP_SLICES",
    "MAX_VOXELS",
    "DicomSeries",
    "ScanLoadError",
    "ScanSource",
    "SimpleITKReader",
    "find_scans",
    "load_scan",
    "read_series",
    "write_dicom_seg",
    "write_json",
    "write_nifti",
    "write_seg_nrrd",
    "write_summary_csv",
]
