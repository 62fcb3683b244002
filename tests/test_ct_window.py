"""``auto`` windowing of CT without tags: Hounsfield units recognised, the window chosen by body region."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from pydicom.data import get_testdata_file

from visualad_med.apps.cli import main
from visualad_med.io import load_scan
from visualad_med.transforms import CT_WINDOWS, auto_window, resolve_intensity_window, window_range
from visualad_med.transforms.ct_window import looks_like_hu

MODEL = ["--head", "untrained", "--backbone", "vit_tiny_patch16_224", "--backbone-weights", "random",
         "--image-size", "32", "--device", "cpu", "--scoring", "visualad", "--no-preview"]
LIVER, HYPO, HYPER = 60.0, 10.0, 150.0
"""HU of the phantom's liver and of its two lesions."""


def ellipse(shape: tuple[int, int], radii: tuple[float, float], centre=(0.0, 0.0)) -> np.ndarray:
    rows, columns = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return ((rows - centre[0]) / radii[0]) ** 2 + ((columns - centre[1]) / radii[1]) ** 2 < 1


def abdomen_phantom(side: int = 128, slices: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """An abdomen in HU on a 384 mm field of view (3 x 3 x 5 mm voxels): air, fat, muscle, liver with a
    hypodense and a hyperdense lesion, a vertebra; int16, and the affine."""
    plane = np.full((side, side), -1000.0)
    plane[ellipse(plane.shape, (0.85, 0.95))] = -100.0  # fat
    plane[ellipse(plane.shape, (0.75, 0.85))] = 40.0  # muscle and bowel
    plane[ellipse(plane.shape, (0.35, 0.3), (-0.2, -0.4))] = LIVER
    plane[ellipse(plane.shape, (0.08, 0.08), (0.6, 0.0))] = 700.0  # vertebra
    volume = np.repeat(plane[:, :, None], slices, axis=2)
    volume[35:41, 30:36, 4:8] = HYPO
    volume[48:54, 38:44, 4:8] = HYPER
    return volume.astype(np.int16), np.diag([3.0, 3.0, 5.0, 1.0])


def head_phantom(side: int = 128, slices: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A head in HU on a 256 mm field of view: air, a 7 mm skull, brain."""
    plane = np.full((side, side), -1000.0)
    plane[ellipse(plane.shape, (0.7, 0.6))] = 1000.0
    plane[ellipse(plane.shape, (0.64, 0.54))] = 35.0
    return np.repeat(plane[:, :, None], slices, axis=2).astype(np.int16), np.diag([2.0, 2.0, 5.0, 1.0])


def as_volume(data: np.ndarray, affine: np.ndarray, **meta) -> MetaTensor:
    return MetaTensor(torch.from_numpy(data.astype(np.float32))[None], affine=torch.from_numpy(affine), meta=meta)


def test_a_nifti_ct_gets_the_soft_tissue_window_and_its_lesions_stand_out(tmp_path):
    data, affine = abdomen_phantom()
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "abdomen.nii.gz")
    scan = load_scan(tmp_path / "abdomen.nii.gz")
    assert scan.window.spec == "abdomen" and (scan.window.low, scan.window.high) == window_range(CT_WINDOWS["abdomen"])
    assert "Hounsfield units" in scan.window.reason and "not a head" in scan.window.reason

    def contrast(low: float, high: float) -> float:
        """Smaller windowed difference between a lesion and the liver around it (0..1)."""
        return min(abs(HYPER - LIVER), abs(LIVER - HYPO)) / (high - low)

    old = resolve_intensity_window(as_volume(data, affine), "percentile")  # what auto did before: percentiles
    assert contrast(scan.window.low, scan.window.high) > 0.12 and contrast(old.low, old.high) < 0.04


def test_a_head_ct_without_tags_gets_the_brain_window_and_the_report_says_why(tmp_path):
    data, affine = head_phantom()
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "in" / "head.nii.gz")
    torch.manual_seed(0)
    assert main(["infer", str(tmp_path / "in"), str(tmp_path / "out"), *MODEL]) == 0
    report = json.loads((tmp_path / "out" / "head_report.json").read_text())
    assert report["window"] == "brain" and "a head by its size" in report["window_reason"]


@pytest.mark.parametrize("meta, expected", [
    ({"BodyPartExamined": "HEAD"}, "brain"),
    ({"SeriesDescription": "CT ABDOMEN PELVIS W CONTRAST"}, "abdomen"),
    ({"BodyPartExamined": "HEADNECK"}, "abdomen"),
    ({"StudyDescription": "e+1"}, "abdomen"),  # no region words: the scan decides (not a head)
])
def test_dicom_region_words_choose_the_window_before_the_scan_does(meta, expected):
    data, affine = abdomen_phantom(side=64, slices=4)
    spec, why = auto_window(as_volume(data, affine, Modality="CT", **meta))
    assert spec == expected
    assert ("not a head" in why) == ("StudyDescription" in meta)


def test_mr_and_z_scored_volumes_are_not_taken_for_ct():
    rng = np.random.default_rng(0)
    mr = np.round(rng.gamma(2.0, 150.0, (40, 40, 10)))  # non-negative integers, like an MR
    z_scored = rng.normal(0, 1, (40, 40, 10)) * 3  # floats around 0
    phase = np.round(rng.uniform(-4096, 4096, (40, 40, 10)))  # integers spanning +-4096, little "soft tissue"
    for data in (mr, z_scored, phase):
        assert auto_window(as_volume(data, np.eye(4)))[0] == "percentile"
    assert auto_window(as_volume(mr, np.eye(4), Modality="MR")) == ("percentile", "Modality MR")


def test_real_dicom_pixels_in_hounsfield_units_are_recognised_and_mr_pixels_are_not():
    for name, expected in (("CT_small.dcm", True), ("MR_small.dcm", False)):
        dataset = pydicom.dcmread(get_testdata_file(name))
        pixels = pydicom.pixels.apply_rescale(dataset.pixel_array, dataset).astype(np.float64)
        assert looks_like_hu(torch.from_numpy(pixels))[0] is expected, name
