"""Discovery: series grouped by UID, non-scans left out with a logged reason, stable unique names."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from bad_inputs import write_dicom_series
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from visualad_med.io import DicomSeries, ScanSource, find_scans, load_scan, write_dicom_seg, write_seg_nrrd


def _pixels(slices: int) -> np.ndarray:
    return np.arange(slices * 8 * 6, dtype=np.int16).reshape(slices, 8, 6)


def _structured_report(path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = BasicTextSRStorage
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def scan_tree(tmp_path: Path) -> Path:
    """Two series and a stray slice in one folder, a localiser, DICOMDIR, SR, SEG, text, NIfTIs, seg.nrrd."""
    folder = tmp_path / "study" / "dicom"
    first = write_dicom_series(folder, _pixels(6), description="Head CT", names=[f"IM{k:04d}" for k in range(6)])
    second = [f"IM1{k:03d}" for k in range(5)]
    write_dicom_series(folder, _pixels(5), description="Head CT", names=second, origin=(0, 0, 50))
    write_dicom_series(folder, _pixels(1), description="stray", names=["IM9999"])
    localiser = pydicom.dcmread(first[0])
    localiser.SOPInstanceUID = localiser.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    localiser.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    localiser.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    localiser.save_as(folder / "IM0100", enforce_file_format=True)
    shutil.copy(get_testdata_file("DICOMDIR"), tmp_path / "study" / "DICOMDIR")
    _structured_report(folder / "SR0001")
    series = DicomSeries.from_files(first)
    write_dicom_seg(np.ones(series.shape, bool), series.affine, series.datasets, folder / "SEG0001", "visualad", "0.1")
    (tmp_path / "study" / "notes.txt").write_text("scanned on Tuesday\n")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "t1.nii")
    (tmp_path / "deeper").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "deeper" / "T1.nii.gz")
    write_seg_nrrd(np.zeros((4, 4, 4)), np.eye(4), tmp_path / "t1.seg.nrrd")
    (tmp_path / ".t1.nii.gz.x1.tmp.nii.gz").write_bytes(b"partial")
    return tmp_path


def test_find_scans_groups_series_and_skips_non_scans(scan_tree: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.DEBUG, logger="visualad_med.io.discover"):
        scans = find_scans(scan_tree)
    dicom = [s for s in scans if s.kind == "dicom"]
    assert sorted(len(s.files) for s in dicom) == [5, 6]
    assert all(s.modality == "CT" and s.name.startswith("Head_CT_") for s in dicom)
    assert {s.series_uid for s in dicom} == {str(pydicom.dcmread(s.files[0]).SeriesInstanceUID) for s in dicom}
    niftis = [s for s in scans if s.kind == "nifti"]
    assert len(niftis) == 3 and all(s.name.lower().startswith("t1_") and s.modality is None for s in niftis)
    assert len(scans) == 5
    names = [s.name for s in scans]
    assert len({n.lower() for n in names}) == 5 and names == sorted(names, key=lambda n: (n.lower(), n))
    assert find_scans(scan_tree) == scans  # deterministic

    log = caplog.text
    assert "IM9999: skipped, series" in log and "has a single slice" in log
    assert "IM0100: skipped, a localiser image" in log
    assert "DICOMDIR: skipped, a DICOMDIR" in log
    assert "SR0001: skipped, a non-image DICOM object (Modality 'SR'" in log
    assert "SEG0001: skipped, a non-image DICOM object (Modality 'SEG'" in log
    assert "t1.seg.nrrd: skipped, a Slicer segmentation" in log
    assert "notes.txt: skipped, not DICOM" in log
    assert ".tmp.nii.gz: skipped, hidden or temporary file" in log

    volumes = [load_scan(s).volume for s in dicom]  # the localiser did not join its series
    assert sorted(v.shape[-1] for v in volumes) == [5, 6]


def test_find_scans_on_single_files_and_with_exclusions(scan_tree: Path):
    (scan,) = find_scans(scan_tree / "t1.nii.gz")
    assert scan == ScanSource("t1", "nifti", (scan_tree / "t1.nii.gz",))
    assert find_scans(scan_tree / "study" / "dicom" / "IM9999") == []
    assert find_scans(scan_tree / "study" / "dicom" / "IM0000") == []  # a file is one slice: pass the folder
    assert [s.kind for s in find_scans(scan_tree, exclude=[scan_tree / "study"])] == ["nifti"] * 3
    with pytest.raises(FileNotFoundError):
        find_scans(scan_tree / "absent")


def test_scan_source_validates():
    with pytest.raises(ValueError, match="kind must be one of"):
        ScanSource("a", "png", (Path("a.png"),))
    with pytest.raises(ValueError, match="no files"):
        ScanSource("a", "nifti", ())
