"""Scan I/O round trips: load DICOM/NIfTI/NRRD/MHA, write NIfTI, seg.nrrd and DICOM SEG, read back.

Geometry is checked against SimpleITK's reading of the input (origin, spacing, direction to 1e-4)
and a bright blob at known voxels must come out at the same voxels and the same patient position.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import highdicom as hd
import nibabel as nib
import nibabel.testing
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from bad_inputs import oblique_orientation, write_dicom_series
from monai.data.utils import orientation_ras_lps
from sitk_checks import ATOL, assert_same_geometry, sitk_xyz

from visualad_med.io import (
    DicomSeries,
    ScanLoadError,
    find_scans,
    load_scan,
    write_dicom_seg,
    write_json,
    write_nifti,
    write_seg_nrrd,
    write_summary_csv,
)
from visualad_med.io.dicom_series import _place
from visualad_med.io.layout import argmax_index
from visualad_med.io.sitk_reader import sitk_affine

ROWS, COLUMNS, SLICES = 20, 24, 8
BLOB = (slice(3, 6), slice(7, 11), 5)  # rows, columns, slice of the synthetic series
ORIGIN = (10.0, -20.0, 30.0)


def dicom_point(ds: pydicom.Dataset, row: float, column: float) -> np.ndarray:
    """LPS position of pixel (row, column) of a slice, by the DICOM formula."""
    cosines = np.asarray(ds.ImageOrientationPatient, dtype=np.float64).reshape(2, 3)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    position = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    return position + column * column_spacing * cosines[0] + row * row_spacing * cosines[1]


def grid_point(affine: np.ndarray | torch.Tensor, index) -> np.ndarray:
    """LPS position of a grid voxel from a RAS affine."""
    lps = orientation_ras_lps(np.asarray(affine, dtype=np.float64))
    return lps[:3, :3] @ np.asarray(index, dtype=np.float64) + lps[:3, 3]


def synthetic_pixels(slices: int = SLICES) -> np.ndarray:
    """``(N, Rows, Columns)`` soft ramp with a bright blob at ``BLOB``."""
    rows, columns = np.mgrid[:ROWS, :COLUMNS]
    pixels = np.stack([rows * 3 + columns * 2 + 10 * k for k in range(slices)]).astype(np.int16)
    pixels[BLOB[2], BLOB[0], BLOB[1]] = 3000
    return pixels


@pytest.fixture
def oblique_series(tmp_path: Path) -> list[Path]:
    """8 oblique slices under shuffled names, some without an extension, InstanceNumber reversed."""
    names = [f"img{n:02d}" + (".dcm" if n % 2 else "") for n in random.Random(3).sample(range(SLICES), SLICES)]
    return write_dicom_series(
        tmp_path / "in" / "oblique", synthetic_pixels(), orientation=oblique_orientation(), origin=ORIGIN, names=names
    )


def read_input_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_oblique_dicom_round_trip(oblique_series: list[Path], tmp_path: Path):
    (scan,) = find_scans(tmp_path / "in")
    assert scan.kind == "dicom" and len(scan.files) == SLICES and scan.modality == "CT"
    volume = load_scan(scan).volume
    assert volume.shape == (1, COLUMNS, ROWS, SLICES) and volume.dtype == torch.float32
    assert volume.meta["Modality"] == "CT" and volume.meta["interpolated_slices"] == []

    reference = read_input_series(oblique_series[0].parent)
    np.testing.assert_allclose(volume.affine.numpy(), sitk_affine(reference), atol=ATOL)
    np.testing.assert_allclose(volume[0].numpy(), sitk_xyz(reference), atol=1e-3)  # HU, rescale applied
    blob = np.argwhere(volume[0].numpy() > 1500)
    expected = np.argwhere(np.ones((4, 3), bool)) + (7, 3)
    np.testing.assert_array_equal(blob, np.column_stack([expected, np.full(len(expected), BLOB[2])]))

    mask = (volume[0] > 1500).numpy()
    out = tmp_path / "out"
    write_nifti(mask, volume.affine, out / "mask.nii.gz")
    write_nifti(volume[0], volume.affine, out / "map.nii")
    write_seg_nrrd(mask, volume.affine, out / "mask.seg.nrrd", color=(1.0, 0.5, 0.0))
    for name in ("mask.nii.gz", "map.nii", "mask.seg.nrrd"):
        written = sitk.ReadImage(str(out / name))
        assert_same_geometry(written, reference)
        np.testing.assert_array_equal(np.argwhere(sitk_xyz(written) > (1500 if name == "map.nii" else 0)), blob)
    assert nib.load(out / "map.nii").get_data_dtype() == np.float32
    assert nib.load(out / "mask.nii.gz").get_data_dtype() == np.uint8
    np.testing.assert_allclose(nib.load(out / "mask.nii.gz").affine, volume.affine.numpy(), atol=ATOL)

    source = pydicom.dcmread(oblique_series[BLOB[2]])
    centre = sitk.ReadImage(str(out / "mask.seg.nrrd")).TransformIndexToPhysicalPoint((8, 4, BLOB[2]))
    np.testing.assert_allclose(centre, dicom_point(source, 4, 8), atol=ATOL)


def test_dicom_seg_frames_reference_their_sources(oblique_series: list[Path], tmp_path: Path):
    (scan,) = find_scans(tmp_path / "in")
    volume = load_scan(scan).volume
    series = DicomSeries.from_files(scan.files)
    mask = (volume[0] > 1500).numpy()
    path = write_dicom_seg(mask, series.affine, series.datasets, tmp_path / "seg.dcm", "visualad", "0.1.0")

    seg = hd.seg.segread(path)
    assert seg.SegmentSequence[0].SegmentLabel == "anomaly"
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("visualad", "0.1.0")
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert seg.NumberOfFrames == 1  # empty frames are left out: only the blob slice
    blob_source = pydicom.dcmread(oblique_series[BLOB[2]])
    assert series.dataset_at(BLOB[2]).SOPInstanceUID == blob_source.SOPInstanceUID
    for frame in seg.PerFrameFunctionalGroupsSequence:
        reference = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert reference == blob_source.SOPInstanceUID
        np.testing.assert_allclose(
            frame.PlanePositionSequence[0].ImagePositionPatient, blob_source.ImagePositionPatient, atol=ATOL
        )
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[blob_source.SOPInstanceUID], segment_numbers=[1]
    )
    np.testing.assert_array_equal(np.argwhere(pixels[0, ..., 0]), np.argwhere(synthetic_pixels()[BLOB[2]] == 3000))


def test_tilted_series_with_a_missing_slice(tmp_path: Path):
    """Slices step 0.3 mm along the column cosine per slice (tilt) and slice 4 is missing."""
    orientation = oblique_orientation(10.0, 15.0)
    cosines = np.reshape(orientation, (2, 3))
    normal = np.cross(cosines[0], cosines[1])
    pixels = np.full((SLICES, ROWS, COLUMNS), 100, np.int16)  # flat, so interpolation keeps the blob's centroid
    pixels[BLOB[2], BLOB[0], BLOB[1]] = 3000
    step = 1.5 * normal + 0.3 * cosines[1]
    folder = tmp_path / "tilted"
    files = write_dicom_series(folder, pixels, orientation=orientation, origin=ORIGIN, step=step, skip=(4,))
    (scan,) = find_scans(tmp_path / "tilted")
    volume = load_scan(scan).volume
    series = DicomSeries.from_files(scan.files)
    assert series.interpolated_slices == [4] == volume.meta["interpolated_slices"]
    assert series.dataset_at(4) is None
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(np.degrees(np.arctan2(0.3, 1.5)), abs=1e-4)
    assert volume.shape == (1, COLUMNS, ROWS + 3, SLICES)  # 7 x 0.3 mm / 0.8 mm = 2.6 rows of shift
    affine = volume.affine.numpy()
    for k, ds in enumerate(series.datasets):  # every acquired plane exactly where DICOM puts it
        x, y = series.offsets[k]
        np.testing.assert_allclose(grid_point(affine, (x, y, series.grid_index[k])), dicom_point(ds, 0, 0), atol=ATOL)
        np.testing.assert_allclose(
            grid_point(affine, (x + 5, y + 7, series.grid_index[k])), dicom_point(ds, 7, 5), atol=ATOL
        )

    weights = np.clip(volume[0, ..., BLOB[2]].numpy() - (100 - 1024), 0, None)  # blob above the flat background
    centroid = (np.argwhere(weights > 0) * weights[weights > 0][:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(
        grid_point(affine, (*centroid, BLOB[2])), dicom_point(series.dataset_at(BLOB[2]), 4, 8.5), atol=ATOL
    )  # linear interpolation moves the blob without moving its centre

    mask = (volume[0] > 1500).numpy()
    frames = series.to_source_frames(mask)
    k = int(np.flatnonzero(series.grid_index == BLOB[2])[0])
    np.testing.assert_array_equal(np.argwhere(frames[k]), np.argwhere(pixels[BLOB[2]] == 3000))
    assert not np.delete(frames, k, axis=0).any()

    write_nifti(mask, volume.affine, tmp_path / "mask.nii.gz")
    write_seg_nrrd(mask, volume.affine, tmp_path / "mask.seg.nrrd")
    for name in ("mask.nii.gz", "mask.seg.nrrd"):
        written = sitk.ReadImage(str(tmp_path / name))
        np.testing.assert_allclose(sitk_affine(written), affine, atol=ATOL)
        np.testing.assert_array_equal(sitk_xyz(written), mask)
    reference = read_input_series(files[0].parent)  # ITK assumes no tilt: only the in-plane part agrees
    written = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    np.testing.assert_allclose(reference.GetDirection(), written.GetDirection(), atol=ATOL)
    np.testing.assert_allclose(reference.GetSpacing()[:2], volume.meta["spacing"][:2], atol=ATOL)


@pytest.mark.parametrize("offset", [(2.25, 3.0), (1.0, 4.6), (3.9, 0.35), (0.0, 0.0)])
def test_tilt_placement_is_scipys_linear_interpolation(offset: tuple[float, float]):
    """The frame moved by ``offset`` as ``affine_transform`` (order 1, constant mode) moves it, edges included."""
    from scipy import ndimage

    frame = np.random.default_rng(1).normal(100.0, 300.0, (9, 13)).astype(np.float32)
    expected = np.full((14, 18), -1024.0, np.float32)
    ndimage.affine_transform(frame, np.ones(2), offset=(-offset[0], -offset[1]), output=expected, order=1, cval=-1024.0)
    placed = np.full_like(expected, -1024.0)
    _place(frame, np.asarray(offset), placed)
    np.testing.assert_allclose(placed, expected, rtol=0, atol=1e-3)  # float32 arithmetic: ulps of 300 HU
    np.testing.assert_array_equal(placed == -1024.0, expected == -1024.0)  # the same pixels left as fill


def test_dicom_volume_is_fortran_ordered_and_the_writers_keep_it(oblique_series: list[Path], tmp_path: Path):
    """Each (X, Y) plane contiguous as decoded: no transposed copy on reading, none on writing the NIfTI."""
    (scan,) = find_scans(oblique_series[0].parent)
    volume = load_scan(scan).volume[0].numpy()
    assert volume.flags.f_contiguous and not volume.flags.c_contiguous
    write_nifti(volume, load_scan(scan).volume.affine, tmp_path / "fortran.nii.gz", "int16")
    write_nifti(np.ascontiguousarray(volume), load_scan(scan).volume.affine, tmp_path / "c.nii.gz", "int16")
    stored = nib.load(tmp_path / "fortran.nii.gz").dataobj
    np.testing.assert_array_equal(stored.get_unscaled(), nib.load(tmp_path / "c.nii.gz").dataobj.get_unscaled())
    assert argmax_index(volume) == np.unravel_index(np.argmax(volume), volume.shape)
    write_nifti(volume, load_scan(scan).volume.affine, tmp_path / "volume.nii.gz", "float32")
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "volume.nii.gz").dataobj), volume)
    np.testing.assert_array_equal(sitk_xyz(sitk.ReadImage(str(tmp_path / "volume.nii.gz"))), volume)


def oblique_affine() -> np.ndarray:
    rotation = np.array(
        [
            [0.9, -0.3, 0.3162277660168379],
            [0.4, 0.8, -0.4472135954999579],
            [0.0, 0.5, 0.8366600265340756],
        ]
    )
    rotation, _ = np.linalg.qr(rotation)
    affine = np.eye(4)
    affine[:3, :3] = rotation * (0.9, 1.1, 2.5)
    affine[:3, 3] = (-40.0, 12.5, 7.0)
    return affine


def test_oblique_nifti_round_trip(tmp_path: Path):
    data = np.zeros((14, 11, 9), np.int16)
    data[2:5, 6:8, 3] = 900
    nib.save(nib.Nifti1Image(data, oblique_affine()), tmp_path / "oblique.nii.gz")
    (scan,) = find_scans(tmp_path)
    assert scan.name == "oblique" and scan.kind == "nifti" and scan.modality is None
    volume = load_scan(scan).volume
    assert volume.shape == (1, 14, 11, 9) and volume.meta["Modality"] == ""
    np.testing.assert_allclose(volume.affine.numpy(), oblique_affine(), atol=1e-6)
    reference = sitk.ReadImage(str(scan.files[0]))

    mask = (volume[0] > 0).numpy()
    write_nifti(mask, volume.affine, tmp_path / "out" / "mask.nii.gz")
    write_seg_nrrd(mask, volume.affine, tmp_path / "out" / "mask.seg.nrrd")
    for name in ("mask.nii.gz", "mask.seg.nrrd"):
        written = sitk.ReadImage(str(tmp_path / "out" / name))
        assert_same_geometry(written, reference)
        np.testing.assert_array_equal(np.argwhere(sitk_xyz(written)), np.argwhere(data))
        point = written.TransformIndexToPhysicalPoint((3, 6, 3))
        np.testing.assert_allclose(point, reference.TransformIndexToPhysicalPoint((3, 6, 3)), atol=ATOL)


def test_nibabel_anatomical_round_trip(tmp_path: Path):
    """nibabel's bundled ``anatomical.nii``: big-endian int16, qform and sform."""
    source = Path(nibabel.testing.data_path) / "anatomical.nii"
    volume = load_scan(source).volume
    assert volume.shape == (1, 33, 41, 25)
    np.testing.assert_allclose(volume[0].numpy(), nib.load(source).get_fdata(), atol=1e-4)
    write_nifti(volume[0], volume.affine, tmp_path / "anatomical_map.nii.gz")
    assert_same_geometry(sitk.ReadImage(str(tmp_path / "anatomical_map.nii.gz")), sitk.ReadImage(str(source)))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_sitk_formats_load_in_sitk_geometry(tmp_path: Path, suffix: str):
    image = sitk.GetImageFromArray(np.arange(5 * 6 * 7, dtype=np.float32).reshape(7, 6, 5))
    image.SetSpacing((0.7, 1.3, 2.0))
    image.SetOrigin((5.0, -3.0, 12.0))
    rotation, _ = np.linalg.qr(np.array([[1.0, 0.2, 0.1], [-0.2, 1.0, 0.3], [0.0, -0.3, 1.0]]))
    image.SetDirection(rotation.flatten().tolist())
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(path))
    volume = load_scan(path).volume
    assert volume.shape == (1, 5, 6, 7)
    np.testing.assert_allclose(volume.affine.numpy(), sitk_affine(image), atol=1e-6)
    assert volume[0, 4, 5, 6] == image[4, 5, 6]
    write_nifti(volume[0], volume.affine, tmp_path / "map.nii.gz")
    assert_same_geometry(sitk.ReadImage(str(tmp_path / "map.nii.gz")), image)


def test_seg_nrrd_header_is_slicer_segmentation(tmp_path: Path):
    mask = np.zeros((6, 5, 4), bool)
    mask[1:3, 2, 3] = True
    affine = np.diag([-0.5, -0.5, 2.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, -5.0)
    path = write_seg_nrrd(mask, affine, tmp_path / "a.seg.nrrd", name="anomaly", color=(0.2, 0.4, 0.6))
    header = {}
    for line in path.read_bytes().split(b"\n\n", 1)[0].decode().splitlines()[1:]:
        if not line.startswith("#"):
            key, _, value = line.partition(":=") if ":=" in line else line.partition(": ")
            header[key] = value
    assert header["space"] == "left-posterior-superior"
    assert header["space origin"] == "(-10,-20,-5)"
    assert header["space directions"] == "(0.5,0,0) (0,0.5,0) (0,0,2)"
    assert header["Segment0_Name"] == "anomaly" and header["Segment0_ID"] == "Segment_1"
    assert header["Segment0_Color"] == "0.2 0.4 0.6"
    assert (header["Segment0_LabelValue"], header["Segment0_Layer"]) == ("1", "0")
    assert header["Segment0_Extent"] == "1 2 2 2 3 3"
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"


def test_writers_validate_and_write_atomically(tmp_path: Path):
    affine = np.eye(4)
    with pytest.raises(ValueError, match=r"\(X, Y, Z\)"):
        write_nifti(np.zeros((2, 2)), affine, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="invertible"):
        write_nifti(np.zeros((2, 2, 2)), np.zeros((4, 4)), tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        write_nifti(np.full((2, 2, 2), 300), affine, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="seg.nrrd"):
        write_seg_nrrd(np.zeros((2, 2, 2)), affine, tmp_path / "a.nrrd")
    with pytest.raises(ValueError, match="color"):
        write_seg_nrrd(np.zeros((2, 2, 2)), affine, tmp_path / "a.seg.nrrd", color=(255, 0, 0))
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json({"x": object()}, tmp_path / "a.json")
    assert list(tmp_path.iterdir()) == []  # nothing partial left behind

    write_json({"score": np.float32(0.5), "shape": np.array([1, 2]), "path": tmp_path}, tmp_path / "r" / "a.json")
    assert json.loads((tmp_path / "r" / "a.json").read_text()) == {"score": 0.5, "shape": [1, 2], "path": str(tmp_path)}
    rows = [{"scan": "a", "score": np.float64(0.25)}, {"scan": "b", "score": 0.75, "error": "bad"}]
    write_summary_csv(rows, tmp_path / "r" / "summary.csv")
    with (tmp_path / "r" / "summary.csv").open() as handle:
        assert list(csv.DictReader(handle)) == [
            {"scan": "a", "score": "0.25", "error": ""},
            {"scan": "b", "score": "0.75", "error": "bad"},
        ]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["a.json", "summary.csv"]


def test_dicom_seg_rejects_bad_arguments(oblique_series: list[Path]):
    series = DicomSeries.from_files(oblique_series)
    target = oblique_series[0].with_name("x")
    with pytest.raises(ValueError, match=r"\(X, Y, Z\)"):
        write_dicom_seg(np.zeros((ROWS, COLUMNS)), series.affine, series.datasets, target, "a", "1")
    with pytest.raises(ValueError, match="source slice"):
        write_dicom_seg(np.zeros(series.shape), series.affine, [], target, "a", "1")
    with pytest.raises(ValueError, match="color"):
        write_dicom_seg(np.zeros(series.shape), series.affine, series.datasets, target, "a", "1", color=(255, 0, 0))
    assert not target.exists()
    with pytest.raises(ValueError, match="grid shape"):
        series.to_source_frames(np.zeros((2, 2, 2)))


def test_load_scan_of_a_folder_with_two_scans_is_an_error(oblique_series: list[Path], tmp_path: Path):
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4)), tmp_path / "in" / "other.nii")
    with pytest.raises(ScanLoadError, match="expected one scan, found 2"):
        load_scan(tmp_path / "in")
