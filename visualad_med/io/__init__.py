"""Scans in, results out: find scans in a folder, load them as volumes, write results in their geometry.

Public API: :func:`find_scans` -> :class:`ScanSource`; :func:`load_scan` -> :class:`Scan` (the
``(1, X, Y, Z)`` volume with a RAS affine, its DICOM series, its resolved window), or :class:`ScanLoadError`; :class:`DicomSeries` to go from a
slice of a loaded DICOM volume back to its source dataset; writers :func:`write_nifti`,
:func:`write_seg_nrrd`, :func:`write_dicom_seg`, :func:`write_json`, :func:`write_summary_csv`.
"""

from visualad_med.errors import ScanLoadError

from .dicom_series import MAX_GAP_SLICES, DicomSeries
from .discover import find_scans
from .load import MAX_VOXELS, Scan, load_scan
from .sitk_reader import SimpleITKReader
from .sources import ScanSource
from .dicom_seg import dicom_seg_problem, write_dicom_seg
from .writers import write_json, write_nifti, write_seg_nrrd, write_summary_csv

__all__ = [
    "MAX_GAP_SLICES",
    "MAX_VOXELS",
    "DicomSeries",
    "Scan",
    "ScanLoadError",
    "ScanSource",
    "SimpleITKReader",
    "dicom_seg_problem",
    "find_scans",
    "load_scan",
    "write_dicom_seg",
    "write_json",
    "write_nifti",
    "write_seg_nrrd",
    "write_summary_csv",
]
