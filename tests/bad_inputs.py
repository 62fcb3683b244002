"""Small scans written on the fly: a DICOM series writer and a corpus of broken inputs.

``write_dicom_series`` writes a CT series with any orientation, slice step (gantry tilt) and
missing slices. ``build_bad_inputs`` writes one folder per broken input under a root; each case
says whether ``find_scans`` should leave it out (a documented skip) or ``load_scan`` should raise
``ScanLoadError`` naming ``culprit`` with ``reason`` in its message. Reused by the end-to-end tests.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def oblique_orientation(yaw_deg: float = 20.0, pitch_deg: float = 30.0) -> tuple[float, ...]:
    """ImageOrientationPatient of an axial plane rotated about z by ``yaw`` then about x by ``pitch``."""
    yaw, pitch = np.radians([yaw_deg, pitch_deg])
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    rotation = rx @ rz
    return tuple(float(v) for v in np.concatenate([rotation[:, 0], rotation[:, 1]]))


def write_dicom_series(
    folder: Path,
    pixels: np.ndarray,
    *,
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    pixel_spacing: Sequence[float] = (0.8, 0.6),
    step: Sequence[float] | None = None,
    skip: Sequence[int] = (),
    names: Sequence[str] | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    description: str = "synthetic",
    modality: str = "CT",
    rescale_intercept: float = -1024.0,
) -> list[Path]:
    """Write ``pixels`` ``(N, Rows, Columns)`` (stored values) as a single-frame CT series.

    Slice ``k`` sits at ``origin + k * step`` (default ``step``: 1.5 mm along the normal).
    InstanceNumber runs against position order, so nothing may sort by it.

    Args:
        folder: output folder (created).
        pixels: ``(N, Rows, Columns)`` stored values (int16).
        orientation: ImageOrientationPatient (row cosine, column cosine).
        origin: ImagePositionPatient of slice 0, LPS mm.
        pixel_spacing: PixelSpacing (between rows, between columns), mm.
        step: slice offset vector, LPS mm; not along the normal for a tilted stack.
        skip: slice indices not written (missing slices).
        names: file name of each slice (default ``slice_<k>.dcm``).
        series_uid, study_uid: UIDs (generated when ``None``).
        description: SeriesDescription.
        modality: Modality.
        rescale_intercept: RescaleIntercept (slope 1).

    Returns:
        The written paths, in slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    cosines = np.asarray(orientation, dtype=np.float64).reshape(2, 3)
    normal = np.cross(cosines[0], cosines[1])
    step = normal * 1.5 if step is None else np.asarray(step, dtype=np.float64)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference = generate_uid()
    written = []
    for k, image in enumerate(np.asarray(pixels, dtype=np.int16)):
        if k in skip:
            continue
        ds = _ct_slice(image, study_uid, series_uid, frame_of_reference, description, modality)
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + k * step]
        ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
        ds.SliceThickness = f"{np.linalg.norm(step):.4f}"
        ds.InstanceNumber = len(pixels) - k
        ds.RescaleIntercept = f"{rescale_intercept:g}"
        ds.RescaleSlope = "1"
        path = folder / (names[k] if names else f"slice_{k:03d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def _ct_slice(
    image: np.ndarray, study_uid: str, series_uid: str, frame_of_reference: str, description: str, modality: str
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.SeriesNumber = 1
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "SYN0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = "Doe^John"
    ds.Manufacturer = "synthetic"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.ascontiguousarray(image).tobytes()
    return ds


@dataclass(frozen=True)
class BadInput:
    """One broken input.

    Attributes:
        name: case name.
        path: what to pass to ``find_scans`` (a file or a folder).
        culprit: the path ``ScanLoadError.path`` must name (``None`` for a discovery skip).
        reason: text that must appear in ``ScanLoadError.reason`` (or, for a skip, in the log).
        skipped: ``True`` when ``find_scans`` must leave the input out instead.
    """

    name: str
    path: Path
    culprit: Path | None
    reason: str
    skipped: bool = False


def _volume(rows: int = 12, columns: int = 10, slices: int = 4) -> np.ndarray:
    return (np.arange(slices * rows * columns) % 200).reshape(slices, rows, columns).astype(np.int16)


def _nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([0.9, 0.8, 1.2, 1.0])), path)
    return path


def build_bad_inputs(root: Path) -> list[BadInput]:
    """Write at least 15 broken inputs under ``root``, one folder each, and describe them."""
    cases: list[BadInput] = []

    folder = root / "truncated_dicom"
    files = write_dicom_series(folder, _volume())
    files[2].write_bytes(files[2].read_bytes()[:-60])
    cases.append(BadInput("truncated_dicom", folder, files[2], "pixel data unreadable"))

    folder = root / "dicom_header_cut"
    files = write_dicom_series(folder, _volume())
    raw = files[1].read_bytes()
    files[1].write_bytes(raw[: raw.index(b"\x28\x00\x30\x00DS") + 10])  # inside PixelSpacing's value
    cases.append(BadInput("dicom_header_cut", folder, files[1], "PixelSpacing"))

    folder = root / "mixed_sizes"
    uid, study = generate_uid(), generate_uid()
    write_dicom_series(folder, _volume(), series_uid=uid, study_uid=study)
    odd = write_dicom_series(
        folder,
        _volume(rows=8),
        series_uid=uid,
        study_uid=study,
        origin=(0, 0, 30),
        names=["z_odd.dcm"] * 4,
        skip=(1, 2, 3),
    )
    cases.append(BadInput("mixed_sizes", folder, odd[0], "image size 8x10 differs"))

    folder = root / "mixed_orientation"
    uid, study = generate_uid(), generate_uid()
    write_dicom_series(folder, _volume(), series_uid=uid, study_uid=study)
    odd = write_dicom_series(
        folder,
        _volume(),
        series_uid=uid,
        study_uid=study,
        orientation=oblique_orientation(),
        origin=(0, 0, 30),
        names=["z_odd.dcm"] * 4,
        skip=(1, 2, 3),
    )
    cases.append(BadInput("mixed_orientation", folder, odd[0], "ImageOrientationPatient"))

    folder = root / "duplicate_positions"
    uid, study = generate_uid(), generate_uid()
    write_dicom_series(folder, _volume(), series_uid=uid, study_uid=study)
    write_dicom_series(folder, _volume(), series_uid=uid, study_uid=study, names=[f"echo2_{k}.dcm" for k in range(4)])
    cases.append(BadInput("duplicate_positions", folder, folder, "share a position"))

    folder = root / "large_gap"
    write_dicom_series(folder, _volume(slices=9), skip=(2, 3, 4, 5))
    cases.append(BadInput("large_gap", folder, folder, "4 missing slices"))

    folder = root / "irregular_spacing"
    files = write_dicom_series(folder, _volume(slices=5), skip=(4,))
    extra = folder / "z_last.dcm"
    ds = pydicom.dcmread(files[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.ImagePositionPatient = [0, 0, 6.7]
    ds.save_as(extra, enforce_file_format=True)
    cases.append(BadInput("irregular_spacing", folder, extra, "not on a regular grid"))

    folder = root / "no_geometry"
    files = write_dicom_series(folder, _volume())
    ds = pydicom.dcmread(files[3])
    del ds.ImageOrientationPatient
    ds.save_as(files[3], enforce_file_format=True)
    cases.append(BadInput("no_geometry", folder, files[3], "missing ImageOrientationPatient"))

    folder = root / "dicom_single_slice"
    files = write_dicom_series(folder, _volume(slices=1))
    cases.append(BadInput("dicom_single_slice", folder, None, "has a single slice", skipped=True))

    folder = root / "non_images"
    folder.mkdir()
    (folder / "README.txt").write_text("not an image\n")
    (folder / "notes.json").write_text("{}\n")
    (folder / "data").write_bytes(bytes(range(256)) * 4)
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkUInt8), str(folder / "photo.png"))
    cases.append(BadInput("non_images", folder, None, "not DICOM", skipped=True))

    path = _nifti(root / "nifti_4d" / "fmri.nii.gz", np.zeros((6, 5, 4, 3), np.float32))
    cases.append(BadInput("nifti_4d", path, path, "4D image"))

    data = np.zeros((6, 5, 4), np.float32)
    data[1, 2, 3] = np.nan
    path = _nifti(root / "nifti_nan" / "nan.nii.gz", data)
    cases.append(BadInput("nifti_nan", path, path, "1 NaN or infinite voxel(s), first at (X, Y, Z) (1, 2, 3)"))

    data = np.zeros((6, 5, 4), np.float32)
    data[0, 0, 0] = np.inf
    data[5, 4, 3] = -np.inf
    path = _nifti(root / "nifti_inf" / "inf.nii", data)
    cases.append(BadInput("nifti_inf", path, path, "2 NaN or infinite voxel(s)"))

    path = root / "empty" / "empty.nii.gz"
    path.parent.mkdir()
    path.touch()
    cases.append(BadInput("empty_file", path, path, "empty file"))

    plain = _nifti(root / "not_gzip" / "plain.nii", np.zeros((6, 5, 4), np.int16))
    path = plain.rename(plain.with_name("plain.nii.gz"))
    cases.append(BadInput("not_gzip", path, path, "not gzip-compressed"))

    path = _nifti(root / "gzip_cut" / "cut.nii.gz", np.random.default_rng(0).normal(size=(30, 30, 30)))
    path.write_bytes(path.read_bytes()[:-2000])
    cases.append(BadInput("gzip_truncated", path, path, "unreadable"))

    path = _nifti(root / "nifti_truncated" / "cut.nii", np.ones((20, 20, 20), np.int16))
    path.write_bytes(path.read_bytes()[:-500])
    cases.append(BadInput("nifti_truncated", path, path, "truncated"))

    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    header.set_qform(np.eye(4), code=1)
    path = root / "huge_header" / "huge.nii.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 1024))
    cases.append(BadInput("huge_declared_size", path, path, "above the limit"))

    path = _nifti(root / "nifti_2d" / "flat.nii.gz", np.zeros((8, 8), np.float32))
    cases.append(BadInput("nifti_2d", path, path, "2D image"))

    path = _nifti(root / "nifti_one_slice" / "one.nii.gz", np.zeros((8, 8, 1), np.float32))
    cases.append(BadInput("nifti_one_slice", path, path, "2D image"))

    path = _nifti(root / "nifti_complex" / "complex.nii", np.zeros((4, 4, 4), np.complex64))
    cases.append(BadInput("nifti_complex", path, path, "not a scalar number"))

    path = root / "mha_2d" / "flat.mha"
    path.parent.mkdir()
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkFloat32), str(path))
    cases.append(BadInput("mha_2d", path, path, "2D image"))

    path = root / "nrrd_rgb" / "colour.nrrd"
    path.parent.mkdir()
    sitk.WriteImage(sitk.Image([8, 8, 4], sitk.sitkVectorUInt8, 3), str(path))
    cases.append(BadInput("nrrd_rgb", path, path, "3 components per voxel"))

    path = root / "nrrd_garbage" / "garbage.nrrd"
    path.parent.mkdir()
    path.write_text("this is not a NRRD header\n")
    cases.append(BadInput("nrrd_garbage", path, path, "unreadable header"))

    return cases
