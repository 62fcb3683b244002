"""Real scans from ``../shared/data/volumes``: the CQ500 head CT (gantry tilt 8.5 deg, one slice missing,
a stray slice of another series) and Siemens MOSAIC MR series. Skipped when ``../shared`` is absent."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from monai.data.utils import orientation_ras_lps
from seg_clients import read_with_dcmqi, read_with_highdicom, require_dcmqi
from sitk_checks import on_grid

from visualad_med.io import (
    DicomSeries,
    ScanLoadError,
    find_scans,
    load_scan,
    write_dicom_seg,
    write_nifti,
    write_seg_nrrd,
)
from visualad_med.io.sitk_reader import sitk_affine

VOLUMES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "volumes"
CQ500 = VOLUMES / "cq500_head_ct_dicom"
ATOL = 1e-4


@pytest.fixture(scope="module")
def cq500():
    if not CQ500.is_dir():
        pytest.skip(f"{CQ500} is absent (real data from ../shared)")
    (scan,) = find_scans(CQ500)
    return scan, load_scan(scan).volume, DicomSeries.from_files(scan.files)


def test_cq500_discovery_leaves_out_the_stray_slice(cq500):
    scan, _, _ = cq500
    assert scan.kind == "dicom" and scan.modality == "CT" and len(scan.files) == 238
    assert all(f.name != "CT000000.dcm" for f in scan.files)


def test_cq500_auto_window_is_the_brain_window_found_by_the_head_rule(cq500, tmp_path: Path):
    scan, volume, _ = cq500
    window = load_scan(scan).window
    assert window.spec == "brain" and "a head by its size" in window.reason  # its headers name no region
    nifti = tmp_path / "cq500.nii.gz"  # the same CT without tags, as NIfTI in HU
    nib.save(nib.Nifti1Image(np.rint(volume[0].numpy()).astype(np.int16), volume.affine.numpy()), nifti)
    assert load_scan(nifti).window.spec == "brain"


def test_cq500_grid_is_exact_at_every_acquired_slice(cq500):
    scan, volume, series = cq500
    assert volume.shape == (1, 512, 562, 239)  # 50 rows wider for the tilt, 1 interpolated plane
    assert series.interpolated_slices == [236] == volume.meta["interpolated_slices"]
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(8.5, abs=1e-3)
    np.testing.assert_allclose(volume.meta["spacing"], [0.443359, 0.443359, 0.625 * np.cos(np.radians(8.5))], atol=1e-5)
    lps = orientation_ras_lps(volume.affine.numpy())
    for k, ds in enumerate(series.datasets):
        x, y = series.offsets[k]
        position = lps[:3, :3] @ (x, y, series.grid_index[k]) + lps[:3, 3]
        np.testing.assert_allclose(position, ds.ImagePositionPatient, atol=ATOL)
    first = sitk.ReadImage(str(series.files[0]))  # slice 0 is copied, not interpolated: exact voxels
    x, y = series.offsets[0].astype(int)
    np.testing.assert_array_equal(volume[0, x : x + 512, y : y + 512, 0].numpy(), sitk.GetArrayFromImage(first)[0].T)


def test_cq500_geometry_against_simpleitk(cq500):
    """ITK stacks along the normal with an even spacing: direction and pixel spacing agree, the rest cannot."""
    _, volume, series = cq500
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in series.files])
    reference = reader.Execute()
    direction = orientation_ras_lps(volume.affine.numpy())[:3, :3] / volume.meta["spacing"]
    np.testing.assert_allclose(np.reshape(reference.GetDirection(), (3, 3)), direction, atol=ATOL)
    np.testing.assert_allclose(reference.GetSpacing()[:2], volume.meta["spacing"][:2], atol=ATOL)
    assert reference.GetSpacing()[2] == pytest.approx(148.75 / 237, abs=1e-4)  # ITK: first-to-last distance / 237


def cq500_mask(shape: tuple[int, int, int]) -> np.ndarray:
    """Two boxes: one mid-volume (5 planes around 120), one across the interpolated plane 236."""
    mask = np.zeros(shape, np.uint8)
    mask[200:230, 300:320, 118:123] = 1
    mask[100:140, 40:60, 234:239] = 1
    return mask


def test_cq500_outputs_keep_the_geometry(cq500, tmp_path: Path):
    _, volume, _ = cq500
    mask = cq500_mask(volume.shape[1:])
    write_nifti(mask, volume.affine, tmp_path / "mask.nii.gz")
    write_seg_nrrd(mask, volume.affine, tmp_path / "mask.seg.nrrd")
    for name in ("mask.nii.gz", "mask.seg.nrrd"):
        written = sitk.ReadImage(str(tmp_path / name))
        np.testing.assert_allclose(sitk_affine(written), volume.affine.numpy(), atol=ATOL)
        np.testing.assert_array_equal(np.argwhere(sitk.GetArrayFromImage(written).T), np.argwhere(mask))


@pytest.mark.parametrize("reader", ["highdicom", "dcmqi"])
def test_cq500_dicom_seg_reads_back_onto_the_mask_voxels(cq500, tmp_path: Path, reader: str):
    """The tilted series' SEG (frames on the tilt-corrected grid) in highdicom and in dcmqi (3D Slicer)."""
    tool = require_dcmqi() if reader == "dcmqi" else None
    _, _, series = cq500
    mask = cq500_mask(series.shape)
    write_nifti(mask, series.affine, tmp_path / "mask.nii.gz")
    path = write_dicom_seg(mask, series.affine, series.datasets, tmp_path / "seg.dcm", "visualad", "0.1.0")
    assert hd.seg.segread(path).NumberOfFrames == 10
    if reader == "highdicom":
        labelmap = read_with_highdicom(path)
    else:
        labelmap, _ = read_with_dcmqi(path, tmp_path / "dcmqi", tool)
    np.testing.assert_array_equal(on_grid(labelmap, sitk.ReadImage(str(tmp_path / "mask.nii.gz"))), mask)


def test_siemens_mosaic_is_reported():
    folder = VOLUMES / "siemens_mr_mosaic_dicom" / "In"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (real data from ../shared)")
    scans = [s for s in find_scans(folder) if s.kind == "dicom"]
    assert len(scans) == 7 and all(s.modality == "MR" for s in scans)
    with pytest.raises(ScanLoadError, match="MOSAIC"):
        load_scan(scans[0])
