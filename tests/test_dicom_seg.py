"""The DICOM SEG of ``visualad-med infer`` read back by its clients: highdicom and dcmqi (3D Slicer).

Untilted, tilted, and tilted series with a missing slice are written here and run through the public
command (tiny random model whose map is the windowed brightness, so the mask is the bright blobs). The
SEG read with highdicom's ``get_volume`` and with dcmqi's ``segimage2itkimage`` (skipped when dcmqi is
not installed) must equal the ``_mask.nii.gz`` voxel for voxel in the same physical space: same
SimpleITK spacing and direction, origin on one of its voxels.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from bad_inputs import oblique_orientation, write_dicom_series
from seg_clients import read_with_dcmqi, read_with_highdicom, require_dcmqi
from sitk_checks import ATOL, on_grid, sitk_xyz
from test_infer import infer

from visualad_med.io import DicomSeries
from visualad_med.io.writers import ANOMALY_COLOR

ROWS, COLUMNS, SLICES = 20, 24, 8
ORIENTATION = oblique_orientation(10.0, 15.0)
CASES = {  # slice step along the normal and along the column cosine (mm), missing slices
    "untilted": (1.5, 0.0, ()),
    "tilted": (1.5, 0.3, ()),
    "tilted_missing_slice": (1.5, 0.3, (4,)),
}


def ct_pixels() -> np.ndarray:
    """``(N, Rows, Columns)`` stored values (intercept -1024): 40 HU with two 2000 HU blobs, frames 0, 3, 4, 7 empty."""
    pixels = np.full((SLICES, ROWS, COLUMNS), 1064, np.int16)
    pixels[1:3, 3:7, 7:12] = 3024
    pixels[5:7, 11:15, 2:7] = 3024
    return pixels


def run_case(case: str, tmp_path: Path) -> tuple[Path, DicomSeries]:
    """Write the case's series, run ``infer`` on it; the output folder and the series."""
    along_normal, along_columns, missing = CASES[case]
    cosines = np.reshape(ORIENTATION, (2, 3))
    step = along_normal * np.cross(cosines[0], cosines[1]) + along_columns * cosines[1]
    origin = (10.0, -20.0, 30.0)
    files = write_dicom_series(
        tmp_path / "in" / case, ct_pixels(), orientation=ORIENTATION, origin=origin, step=step, skip=missing
    )
    out = tmp_path / "out"
    assert infer(tmp_path / "in", out, "--threshold", "0.5") == 0
    return out, DicomSeries.from_files(files)


def outputs(out: Path, suffix: str) -> Path:
    (path,) = out.glob(f"*{suffix}")
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_seg_reads_back_in_highdicom_onto_the_mask_voxels(case: str, tmp_path: Path, brightness_model):
    out, series = run_case(case, tmp_path)
    mask = sitk.ReadImage(str(outputs(out, "_mask.nii.gz")))
    labels = sitk_xyz(mask)
    assert 0 < labels.sum() < labels.size / 4 and labels[..., [0, 3, SLICES - 1]].sum() == 0
    np.testing.assert_array_equal(on_grid(read_with_highdicom(outputs(out, "_seg.dcm")), mask), labels)

    seg = hd.seg.segread(outputs(out, "_seg.dcm"))
    assert {uid for _, _, uid in seg.get_source_image_uids()} == {ds.SOPInstanceUID for ds in series.datasets}
    spacing = np.linalg.norm(series.affine[:3, 2])
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert float(shared.PixelMeasuresSequence[0].SpacingBetweenSlices) == pytest.approx(spacing, abs=ATOL)
    normal = np.cross(*np.reshape(shared.PlaneOrientationSequence[0].ImageOrientationPatient, (2, 3)))
    frames = seg.PerFrameFunctionalGroupsSequence
    heights = np.array([f.PlanePositionSequence[0].ImagePositionPatient for f in frames], np.float64) @ normal
    steps = np.diff(np.sort(heights)) / spacing
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # frames on planes SpacingBetweenSlices apart

    preserved = [_locations_preserved(frame) for frame in frames]
    if case == "untilted":  # the grid is the source stack: each frame on its slice's pixels
        assert preserved == ["YES"] * len(frames)
        sources = {ds.SOPInstanceUID: ds for ds in series.datasets}
        for frame in frames:
            source = sources[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
            np.testing.assert_allclose(
                frame.PlanePositionSequence[0].ImagePositionPatient, source.ImagePositionPatient, atol=ATOL
            )
    else:
        assert "YES" not in preserved

    segment = seg.SegmentSequence[0]
    red = hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue).to_rgb()
    np.testing.assert_allclose(red, 255 * np.array(ANOMALY_COLOR), atol=1)
    assert str(seg.ContentCreatorName) == "visualad_med^"


@pytest.mark.parametrize("case", list(CASES))
def test_seg_reads_back_in_dcmqi_onto_the_mask_voxels(case: str, tmp_path: Path, brightness_model):
    tool = require_dcmqi()
    out, _ = run_case(case, tmp_path)
    mask = sitk.ReadImage(str(outputs(out, "_mask.nii.gz")))
    labelmap, meta = read_with_dcmqi(outputs(out, "_seg.dcm"), tmp_path / "dcmqi", tool)
    np.testing.assert_array_equal(on_grid(labelmap, mask), sitk_xyz(mask))

    (attributes,) = meta["segmentAttributes"][0]
    slicer = sitk.ReadImage(str(outputs(out, "_mask.seg.nrrd")))
    nrrd_rgb = 255 * np.array(slicer.GetMetaData("Segment0_Color").split(), np.float64)
    np.testing.assert_allclose(attributes["recommendedDisplayRGBValue"], nrrd_rgb, atol=1)
    assert attributes["SegmentLabel"] == "anomaly" and meta["ContentCreatorName"] == "visualad_med^"


def _locations_preserved(frame: pydicom.Dataset) -> str | None:
    """SpatialLocationsPreserved of a frame's first source reference; ``None`` without one."""
    for derivation in frame.get("DerivationImageSequence") or []:
        for source in derivation.get("SourceImageSequence") or []:
            return source.get("SpatialLocationsPreserved")
    return None
