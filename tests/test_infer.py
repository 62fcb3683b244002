"""``visualad-med infer`` end to end: scan folders in, Slicer-ready volumes out, with a tiny random model.

Every test calls ``visualad_med.apps.cli.main(["infer", ...])`` the way a user runs the command, on scans
written here: an oblique DICOM series, an oblique NIfTI, a stray slice, the broken-input corpus of
``bad_inputs.py``. Geometry is compared with SimpleITK's reading of the input to 1e-4.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import pydicom
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bad_inputs import build_bad_inputs, oblique_orientation, write_dicom_series
from conftest import tiny_vit
from monai.data import MetaTensor
from monai.data.utils import orientation_ras_lps
from sitk_checks import ATOL, assert_same_geometry, sitk_xyz

from visualad_med.apps.cli import main
from visualad_med.inference.settings import RunSettings
from visualad_med.inference.slices import SliceInferer, scan_scores, slice_preprocessing
from visualad_med.model.visualad import build_model
from visualad_med.io import DicomSeries, ScanSource, find_scans, load_scan
from visualad_med.model.devices import native_bf16
from visualad_med.transforms import resolve_intensity_window

MODEL = ["--head", "untrained", "--backbone", "vit_tiny_patch16_224", "--backbone-weights", "random",
         "--image-size", "32", "--device", "cpu", "--scoring", "visualad"]
ROWS, COLUMNS, SLICES = 20, 24, 8


def infer(*args: str | Path) -> int:
    """``visualad-med infer ARGS`` with the tiny random model, seeded so that every call builds the same one."""
    torch.manual_seed(0)
    return main(["infer", *(str(a) for a in args), *MODEL])


def rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """``(3, 3)`` rotation about z by ``yaw`` then about x by ``pitch``."""
    yaw, pitch = np.radians([yaw_deg, pitch_deg])
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    return rx @ rz


def write_nifti_scan(path: Path, data: np.ndarray, linear: np.ndarray, origin=(-40.0, 12.5, 7.0)) -> Path:
    """Write ``data`` with the RAS affine ``[linear | origin]``; returns ``path``."""
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, origin
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def oblique_nifti(path: Path) -> Path:
    """A 16 x 14 x 10 oblique NIfTI (rotated 25 and 15 degrees, voxels 0.9 x 1.1 x 2.5 mm)."""
    data = np.random.default_rng(1).normal(100.0, 30.0, (16, 14, 10)).astype(np.float32)
    return write_nifti_scan(path, data, rotation(25.0, 15.0) * (0.9, 1.1, 2.5))


def ct_pixels() -> np.ndarray:
    """``(N, Rows, Columns)`` stored values of a CT (intercept -1024): 40 HU tissue with an 80 HU patch."""
    pixels = np.random.default_rng(2).normal(1064.0, 5.0, (SLICES, ROWS, COLUMNS))
    pixels[3:6, 4:10, 6:14] += 40.0
    return pixels.astype(np.int16)


def read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def summary_rows(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def scan_files(name: str, dicom: bool) -> set[str]:
    suffixes = ["_anomaly.nii.gz", "_mask.nii.gz", "_mask.seg.nrrd", "_preview.png", "_report.json"] + (
        ["_seg.dcm"] if dicom else [])
    return {name + suffix for suffix in suffixes}


def check_volumes(scan: ScanSource, out: Path, reference: sitk.Image, threshold: float) -> np.ndarray:
    """Map, mask and seg.nrrd of ``scan``: our affine, SimpleITK's geometry of the input, consistent voxels.

    Returns the mask ``(X, Y, Z)``.
    """
    volume = load_scan(scan).volume
    anomaly = nib.load(out / f"{scan.name}_anomaly.nii.gz")
    mask = nib.load(out / f"{scan.name}_mask.nii.gz")
    for image in (anomaly, mask):
        np.testing.assert_allclose(image.affine, volume.affine.numpy(), atol=ATOL)
        assert image.shape == tuple(volume.shape[1:])
    assert (anomaly.get_data_dtype(), mask.get_data_dtype()) == (np.int16, np.uint8)  # the map: int16 and a scale
    labels = np.asarray(mask.dataobj)
    stored = np.asarray(anomaly.dataobj)
    clear = np.abs(stored - threshold) > anomaly.dataobj.slope  # the mask comes from the float32 map in memory
    np.testing.assert_array_equal(labels[clear], stored[clear] > threshold)
    assert 0 < labels.sum() < labels.size / 2
    for suffix in ("_anomaly.nii.gz", "_mask.nii.gz", "_mask.seg.nrrd"):
        assert_same_geometry(sitk.ReadImage(str(out / f"{scan.name}{suffix}")), reference)
    np.testing.assert_array_equal(sitk_xyz(sitk.ReadImage(str(out / f"{scan.name}_mask.seg.nrrd"))), labels)
    return labels


def check_report(scan: ScanSource, out: Path, labels: np.ndarray) -> dict:
    """``<scan>_report.json`` against the scan and its mask; returns the report."""
    report = json.loads((out / f"{scan.name}_report.json").read_text())
    volume = load_scan(scan).volume
    assert (report["scan"], report["source"]["kind"], report["source"]["path"]) == (scan.name, scan.kind,
                                                                                      str(scan.path))
    assert report["shape"] == list(volume.shape[1:]) and report["planes"] == ["axial"]
    np.testing.assert_allclose(report["affine"], volume.affine.numpy(), atol=ATOL)
    assert report["window"] == ("brain" if scan.kind == "dicom" else "percentile")
    assert (report["threshold"], report["threshold_source"]) == (0.75, "user")
    per_slice = report["scores"]["per_slice"]
    assert len(per_slice) == volume.shape[1 + report["scores"]["slice_axis"]]
    assert report["seconds"]["slices_run"] == sum(s is not None for s in per_slice) > 0
    assert report["scores"]["max_slice_score"] == max(s for s in per_slice if s is not None)
    assert report["anomalous_voxels"] == labels.sum()
    dicom = [("dicom_seg", "_seg.dcm")] if scan.kind == "dicom" else []
    names = [("anomaly", "_anomaly.nii.gz"), ("mask", "_mask.nii.gz"), ("segmentation", "_mask.seg.nrrd"),
             *dicom, ("preview", "_preview.png"), ("report", "_report.json")]
    assert report["outputs"] == {key: scan.name + suffix for key, suffix in names}
    assert report["model"]["backbone"].startswith("vit_tiny_patch16_224") and report["model"]["head_sha256"] is None
    return report


def check_dicom_seg(scan: ScanSource, out: Path, labels: np.ndarray) -> None:
    """The DICOM SEG references every source slice, sits on their planes and holds the mask."""
    series = DicomSeries.from_files(scan.files)
    sources = {str(ds.SOPInstanceUID): ds for ds in series.datasets}
    seg = hd.seg.segread(out / f"{scan.name}_seg.dcm")
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(sources)
    shared = seg.SharedFunctionalGroupsSequence[0]
    first = series.datasets[0]
    np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                               first.ImageOrientationPatient, atol=ATOL)
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing, first.PixelSpacing, atol=ATOL)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient,
                                   sources[uid].ImagePositionPatient, atol=ATOL)
    frames = series.to_source_frames(labels)
    marked = [k for k in range(len(frames)) if frames[k].any()]
    uids = [str(series.datasets[k].SOPInstanceUID) for k in marked]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0], frames[marked])


def test_folder_to_slicer_ready_outputs_in_each_scans_geometry(tmp_path, caplog, capsys, brightness_model):
    source = tmp_path / "in"
    head = write_dicom_series(source / "oblique", ct_pixels(), orientation=oblique_orientation(),
                              origin=(10.0, -20.0, 30.0))
    for path in head:  # a head CT: window auto takes the brain window (W80 L40) from the region tag
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = "HEAD"
        ds.save_as(path, enforce_file_format=True)
    write_dicom_series(source / "stray", ct_pixels()[:1], description="stray")
    nifti = oblique_nifti(source / "oblique_mr.nii.gz")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert infer(source, out, "--threshold", "0.75") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("2 scans succeeded, 0 failed; summary ")
    assert "has a single slice" in caplog.text  # the stray slice is left out, with the reason

    dicom, mr = sorted(find_scans(source), key=lambda s: s.kind)
    assert (dicom.kind, mr.name) == ("dicom", "oblique_mr")
    assert {p.name for p in out.iterdir()} == scan_files(dicom.name, True) | scan_files(mr.name, False) | {
        "summary.csv", "index.html"}
    reports = {}
    for scan, reference in ((dicom, read_series(source / "oblique")), (mr, sitk.ReadImage(str(nifti)))):
        labels = check_volumes(scan, out, reference, 0.75)
        reports[scan.name] = check_report(scan, out, labels)
        if scan.kind == "dicom":
            check_dicom_seg(scan, out, labels)

    rows = summary_rows(out)
    scores = [float(row["score_top1pct"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    for row in rows:
        report = reports[row["scan"]]
        assert row["status"] == "ok" and row["error"] == "" and row["source"] == report["source"]["path"]
        assert float(row["score_top1pct"]) == pytest.approx(report["scores"]["top1pct_mean"])
        assert float(row["score_max_slice"]) == pytest.approx(report["scores"]["max_slice_score"])
        assert int(row["anomalous_voxels"]) == report["anomalous_voxels"]
        assert row["shape"] == "x".join(map(str, report["shape"])) and float(row["seconds"]) > 0
    assert {(row["kind"], row["modality"]) for row in rows} == {("dicom", "CT"), ("nifti", "")}


AXES = {"oblique": np.eye(3), "permuted": np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])}
"""Voxel axes -> RAS directions (columns): the usual (R-L, A-P, S-I), and (A-P, S-I, L-R) as sagittal scans store them."""


@pytest.mark.parametrize("axes", ["oblique", "permuted"])
def test_bright_blob_comes_out_at_its_voxels_in_all_three_planes(tmp_path, brightness_model, axes):
    # Every plane's slices have 32 pixels on their long side, so the 32-pixel model input needs no resizing.
    world_axis = np.abs(AXES[axes]).argmax(axis=0)  # the RAS axis each voxel axis runs along
    data = np.full(tuple(np.array((32, 32, 10))[world_axis]), 50.0, np.float32)
    blob = tuple((slice(8, 13), slice(20, 26), slice(4, 7))[w] for w in world_axis)
    data[blob] = 1000.0
    linear = rotation(10.0, 0.0) @ AXES[axes] * np.array((0.7, 0.9, 2.0))[world_axis]
    path = write_nifti_scan(tmp_path / "in" / "blob.nii.gz", data, linear)
    out = tmp_path / "out"
    # window 0..200 HU: background 0.25, blob 1.0; a voxel passes 0.9 only if all three planes put the blob there
    assert infer(tmp_path / "in", out, "--window", "200,100", "--planes", "axial,coronal,sagittal",
                 "--threshold", "0.9") == 0

    mask = nib.load(out / "blob_mask.nii.gz")
    np.testing.assert_array_equal(np.argwhere(np.asarray(mask.dataobj)), np.argwhere(data > 500))
    np.testing.assert_allclose(np.asarray(nib.load(out / "blob_anomaly.nii.gz").dataobj)[blob], 1.0, atol=1e-5)
    centre = np.argwhere(data > 500).mean(axis=0)
    expected = nib.load(path).affine @ (*centre, 1.0)
    np.testing.assert_allclose(mask.affine @ (*np.argwhere(np.asarray(mask.dataobj)).mean(axis=0), 1.0), expected,
                               atol=ATOL)
    seg = sitk.ReadImage(str(out / "blob_mask.seg.nrrd"))
    np.testing.assert_array_equal(np.argwhere(sitk_xyz(seg)), np.argwhere(data > 500))
    lps = orientation_ras_lps(np.asarray(nib.load(path).affine))
    np.testing.assert_allclose(seg.TransformContinuousIndexToPhysicalPoint(centre.tolist()),
                               lps[:3, :3] @ centre + lps[:3, 3], atol=ATOL)
    report = json.loads((out / "blob_report.json").read_text())
    assert report["scores"]["slice_axis"] == int(np.flatnonzero(world_axis == 2)[0])
    assert report["anomalous_voxels"] == data[blob].size


def test_sagittal_dicom_series_is_written(tmp_path):
    write_dicom_series(tmp_path / "in" / "sagittal", ct_pixels(), orientation=(0.0, 1, 0, 0, 0, -1))
    assert infer(tmp_path / "in", tmp_path / "out") == 0


def test_bad_inputs_fail_one_by_one_and_the_run_goes_on(tmp_path, caplog, capsys):
    source = tmp_path / "in"
    cases = build_bad_inputs(source / "bad")
    assert len(cases) >= 15
    oblique_nifti(source / "good.nii.gz")
    before = checksums(source)
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):  # files that are not scans at all are logged at debug level
        assert infer(source, out) == 1
    failing = [case for case in cases if not case.skipped]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"1 scans succeeded, {len(failing)} failed;")

    rows = {row["source"]: row for row in summary_rows(out)}
    assert rows.pop(str(source / "good.nii.gz"))["status"] == "ok"
    problems = {}
    for case in cases:
        row = rows.pop(str(case.path), None)
        if case.skipped:
            if row is not None or case.reason not in caplog.text:
                problems[case.name] = f"expected a logged skip ({case.reason!r}), got {row}"
        elif row is None or row["status"] != "failed" or case.reason not in row["error"]:
            problems[case.name] = f"expected a failed row with {case.reason!r}, got {row}"
        elif f"{case.culprit}: failed: " not in caplog.text:
            problems[case.name] = f"the log does not name {case.culprit}"
    assert not problems, problems
    assert not rows, f"rows for unknown sources: {list(rows)}"
    assert {p.name for p in out.iterdir()} == scan_files("good", False) | {"summary.csv", "index.html"}  # none partial
    assert checksums(source) == before  # inputs untouched


def _without_root_file_access() -> None:
    """``preexec_fn``: drop the capabilities that let root write into read-only folders (no-op otherwise)."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP; exec then leaves root without them
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_read_only_output_folder_is_reported_and_nothing_written(tmp_path):
    oblique_nifti(tmp_path / "in" / "scan.nii.gz")
    out = tmp_path / "out"
    out.mkdir(mode=0o555)
    before = checksums(tmp_path / "in")
    command = [sys.executable, "-m", "visualad_med", "infer", str(tmp_path / "in"), str(out), *MODEL]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            preexec_fn=_without_root_file_access)
    out.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert f"output folder {out} is not writable" in result.stderr
    assert list(out.iterdir()) == []
    assert checksums(tmp_path / "in") == before


def test_resume_skips_finished_scans_and_overwrite_redoes_them(tmp_path, caplog):
    source = tmp_path / "in"
    oblique_nifti(source / "a.nii.gz")
    oblique_nifti(source / "b.nii.gz")
    out = tmp_path / "out"
    assert infer(source, out) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert infer(source, out) == 0
    assert "a: already done (a_report.json exists), skipped" in caplog.text
    assert "b: already done (b_report.json exists), skipped" in caplog.text
    run_files = {"summary.csv", "index.html"}  # rewritten by every run
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name not in run_files} == {
        name: stamp for name, stamp in stamps.items() if name not in run_files}
    assert [row["status"] for row in summary_rows(out)] == ["ok", "ok"]

    (out / "a_mask.seg.nrrd").unlink()  # an incomplete scan is redone, not skipped
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert infer(source, out) == 0
    assert "a: a_report.json exists but is unreadable or outputs are missing; redoing" in caplog.text
    assert "b: already done" in caplog.text and (out / "a_mask.seg.nrrd").is_file()

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert infer(source, out, "--overwrite") == 0
    assert "already done" not in caplog.text
    assert all(p.stat().st_mtime_ns > stamps[p.name] for p in out.iterdir())


def test_output_folder_inside_the_input_folder_is_refused(tmp_path, caplog):
    source = tmp_path / "in"
    oblique_nifti(source / "scan.nii.gz")
    with caplog.at_level(logging.INFO):
        assert infer(source, source / "results") == 2
    assert f"output folder {source / 'results'} is inside the input folder {source}" in caplog.text
    assert "--output-inside-input" in caplog.text and not (source / "results").exists()

    for _ in range(2):  # allowed explicitly: its own outputs are never taken for scans
        assert infer(source, source / "results", "--output-inside-input", "--overwrite") == 0
        assert [row["scan"] for row in summary_rows(source / "results")] == ["scan"]
    assert infer(source / "scan.nii.gz", source / "single") == 0  # a file's folder is not an input folder


def test_triplanar_map_is_the_mean_of_the_three_single_plane_maps(tmp_path):
    source = tmp_path / "in"
    write_nifti_scan(source / "small.nii.gz",
                     np.random.default_rng(3).normal(size=(18, 14, 11)).astype(np.float32),
                     rotation(5.0, 8.0) * (0.8, 1.0, 2.0))
    maps = {}
    for planes in ("axial", "coronal", "sagittal", "axial,coronal,sagittal"):
        assert infer(source, tmp_path / planes, "--planes", planes, "--map-dtype", "float32") == 0
        maps[planes] = np.asarray(nib.load(tmp_path / planes / "small_anomaly.nii.gz").dataobj)
        assert json.loads((tmp_path / planes / "small_report.json").read_text())["planes"] == planes.split(",")
    single = [maps[p] for p in ("axial", "coronal", "sagittal")]
    assert all(np.abs(a - b).max() > 1e-3 for a, b in [single[:2], single[1:], single[::2]])  # planes differ
    np.testing.assert_allclose(maps["axial,coronal,sagittal"], np.mean(single, axis=0), atol=1e-6)


def test_slabs_without_body_are_left_out(tmp_path):
    data = np.zeros((12, 10, 80), np.float32)  # the first 64-slice slab is air only
    data[..., 70:] = np.random.default_rng(4).normal(100.0, 10.0, (12, 10, 10))
    write_nifti_scan(tmp_path / "in" / "long.nii.gz", data, np.diag([0.8, 0.8, 1.5]))
    assert infer(tmp_path / "in", tmp_path / "out", "--window", "200,100") == 0
    report = json.loads((tmp_path / "out" / "long_report.json").read_text())
    assert report["seconds"]["slices_run"] == 10
    assert [s is not None for s in report["scores"]["per_slice"]] == [False] * 70 + [True] * 10
    stored = np.asarray(nib.load(tmp_path / "out" / "long_anomaly.nii.gz").dataobj)
    np.testing.assert_array_equal(stored[..., :70], stored[..., 70:].min())  # slices not run: the map's minimum


def test_scan_score_is_the_exact_top_one_percent_mean():
    volume = torch.rand(30, 20, 17, generator=torch.Generator().manual_seed(0))
    ties = torch.zeros(30, 20, 17)
    ties[:2, :3, :10] = 0.5  # 60 voxels tie across the top-1 % boundary (102 voxels)
    ties[5, 5, :4] = torch.tensor([0.9, 0.8, 0.7, 0.6])
    count = int(np.ceil(0.01 * volume.numel()))
    sparse = -torch.ones(6400)
    sparse[::64] = torch.arange(1.0, 101.0)  # the sample holds every high value: too few reach its bound
    for values in (volume, ties, MetaTensor(volume), volume.permute(2, 1, 0), sparse):
        count = int(np.ceil(0.01 * values.numel()))
        expected = float(torch.sort(torch.as_tensor(values).flatten(), descending=True).values[:count].double().mean())
        assert scan_scores(values, [None])["top1pct_mean"] == pytest.approx(expected, rel=1e-6)
    assert scan_scores(ties, [None])["top1pct_mean"] == pytest.approx((3.0 + 60 * 0.5) / 102)
    assert scan_scores(sparse, [None])["top1pct_mean"] == pytest.approx(np.mean(np.arange(37, 101)))
    assert scan_scores(volume, [None, 0.2, 0.7, None])["max_slice_score"] == 0.7
    assert scan_scores(torch.zeros(2, 2, 2), [None]) == {"max_slice_score": None, "top1pct_mean": 0.0}


def test_percentile_window_of_a_mostly_blank_volume_scales_min_to_max(caplog, brightness_model):
    volume = torch.zeros(1, 32, 32, 12)
    volume[0, 10:14, 10:14, 5:8] = 300.0  # 0.1 % of the voxels: the 0.5 and 99.5 percentiles are both 0
    image = MetaTensor(volume, affine=torch.eye(4))
    with caplog.at_level(logging.WARNING):
        window = resolve_intensity_window(image, "auto")
    assert "coincide; scaling min..max (0..300)" in caplog.text
    assert window[:3] == ("percentile", 0.0, 300.0) and "not Hounsfield units" in window.reason
    model = build_model(tiny_vit(), image_size=32)
    result = SliceInferer(RunSettings(progress=False))(image, model, slice_preprocessing(model.config, (window.low, window.high)))
    np.testing.assert_allclose(result.anomaly[0].numpy(), volume[0].numpy() / 300.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"planes must be distinct names .* got \['axial', 'axial'\]"):
        SliceInferer(RunSettings(planes=("axial", "axial")))


def test_a_torchrun_rank_without_scans_succeeds_with_an_empty_summary(tmp_path, monkeypatch):
    from visualad_med.inference.folder import ScanSteps, run_scans

    (tmp_path / "only.nii.gz").write_bytes(b"")
    scans = [ScanSource("only", "nifti", (tmp_path / "only.nii.gz",))]

    def refuse(source: ScanSource) -> dict:
        raise ValueError(f"{source.name} is not a volume")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    steps = ScanSteps(refuse, lambda loaded: loaded, lambda result, paths: {})
    written = run_scans(scans, tmp_path / "out", steps, progress=False)
    assert (written.succeeded, written.failed, written.best) == (0, 0, None)
    assert (tmp_path / "out" / "summary_rank1.csv").read_text().splitlines() == [",".join(
        ("scan", "status", "score_max_slice", "score_top1pct", "anomalous_voxels", "kind", "modality", "shape",
         "seconds", "preview", "error", "source"))]
    monkeypatch.setenv("RANK", "0")
    written = run_scans(scans, tmp_path / "out", steps, progress=False)
    assert (written.succeeded, written.failed) == (0, 1)
    assert "not a volume" in (tmp_path / "out" / "summary_rank0.csv").read_text()


def test_torchrun_shards_a_folder_across_two_processes(tmp_path):
    """Two CPU processes on 8 small volumes: each scan done once, by one rank, and each rank's summary lists its own."""
    rng = np.random.default_rng(8)
    for k in range(8):
        write_nifti_scan(tmp_path / "in" / f"scan{k}.nii.gz", rng.normal(100, 20, (ROWS, COLUMNS, SLICES)),
                         np.eye(3))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "visualad_med", "infer",
               str(tmp_path / "in"), str(out), *MODEL]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = []
    for rank in (0, 1):
        with open(out / f"summary_rank{rank}.csv", newline="") as handle:
            ranks.append({row["scan"] for row in csv.DictReader(handle) if row["status"] == "ok"})
    assert len(ranks[0]) == len(ranks[1]) == 4 and ranks[0] | ranks[1] == {f"scan{k}" for k in range(8)}
    assert all((out / f"scan{k}_report.json").is_file() for k in range(8))
    assert not (out / "summary.csv").exists()


def test_precision_is_chosen_recorded_and_barely_moves_the_map(tmp_path):
    rng = np.random.default_rng(3)
    write_nifti_scan(tmp_path / "in" / "scan.nii.gz", rng.normal(100, 20, (ROWS, COLUMNS, SLICES)), np.eye(3))
    maps = {}
    for precision in ("fp32", "bf16"):
        assert infer(tmp_path / "in", tmp_path / precision, "--precision", precision, "--map-dtype", "float32",
                     "--no-preview") == 0
        report = json.loads((tmp_path / precision / "scan_report.json").read_text())
        assert report["model"]["precision"] == precision
        maps[precision] = nib.load(tmp_path / precision / "scan_anomaly.nii.gz").get_fdata()
    assert not np.array_equal(maps["fp32"], maps["bf16"])  # bf16 autocast really ran
    assert np.corrcoef(maps["fp32"].ravel(), maps["bf16"].ravel())[0, 1] > 0.95  # the ranking barely moves
    assert infer(tmp_path / "in", tmp_path / "auto", "--no-preview") == 0
    auto = json.loads((tmp_path / "auto" / "scan_report.json").read_text())["model"]["precision"]
    assert auto == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")


def test_resume_compares_the_precision_that_ran_resolved_from_the_settings(tmp_path):
    """The identity a rerun compares records the autocast that ran: ``auto`` resolved on the device."""
    from visualad_med.inference.folder import run_folder
    from visualad_med.model.devices import inference_precision

    write_nifti_scan(tmp_path / "in" / "scan.nii.gz", np.random.default_rng(4).normal(100, 20, (ROWS, COLUMNS, SLICES)),
                     np.eye(3))
    model = build_model(tiny_vit(), image_size=32)
    for asked in ("bf16", "auto"):
        run = run_folder(model, find_scans(tmp_path / "in"), tmp_path / asked, RunSettings(progress=False,
                                                                                            precision=asked))
        assert run.scans.succeeded == 1
        report = json.loads((tmp_path / asked / "scan_report.json").read_text())
        ran = inference_precision(torch.device("cpu"), asked)
        assert report["identity"]["settings"]["precision"] == report["model"]["precision"] == ran != "auto"
