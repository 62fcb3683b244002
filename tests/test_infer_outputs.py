"""What ``visualad-med infer`` writes for viewers: compact maps, quick looks, the run's index, quiet logs, fast help.

Runs the public command (``visualad_med.apps.cli.main`` in process, or ``python -m visualad_med``
in a subprocess) on scans written here, with the tiny random model of ``test_infer.py``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bad_inputs import write_dicom_series
from PIL import Image
from sitk_checks import assert_same_geometry, sitk_xyz

from visualad_med.apps.cli import main
from visualad_med.inference.preview import preview_focus
from visualad_med.model.visualad import VisualAD

MODEL = ["--head", "untrained", "--backbone", "vit_tiny_patch16_224", "--backbone-weights", "random",
         "--image-size", "32", "--device", "cpu", "--scoring", "visualad"]
AIR_SLICES = 3
"""Leading slices of :func:`scan_with_air` without body: the model does not run them."""


def infer(*args: str | Path) -> int:
    """``visualad-med infer ARGS`` with the tiny random model, seeded."""
    torch.manual_seed(0)
    return main(["infer", *(str(a) for a in args), *MODEL])


def scan_with_air(path: Path, seed: int = 0, blob: float = 150.0) -> Path:
    """A 20 x 18 x 12 NIfTI: air (0) around tissue (100 +- 30) with a bright blob; the first slices all air."""
    data = np.zeros((20, 18, 12), np.float32)
    data[2:18, 2:16, AIR_SLICES:] = np.random.default_rng(seed).normal(100.0, 30.0, (16, 14, 12 - AIR_SLICES))
    data[6:10, 6:10, 6:9] += blob
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([0.9, 1.1, 2.5, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 20.0)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture
def centred_brightness_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model's map is ``2 * brightness - 1``: air at -1 (below the 0 of slices not run), tissue about 0."""

    def forward(self: VisualAD, images: torch.Tensor, settings=None) -> dict[str, torch.Tensor]:
        maps = 2 * (images[:, 0] * self.config.std[0] + self.config.mean[0]) - 1
        return {"map": maps, "score": maps.flatten(1).amax(1)}

    monkeypatch.setattr(VisualAD, "forward", forward)


def summary_rows(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_map_dtypes_round_trip_and_slices_not_run_hold_the_minimum(tmp_path, centred_brightness_model):
    scan = scan_with_air(tmp_path / "in" / "air.nii.gz")
    options = ["--window", "200,100", "--threshold", "-0.5", "--no-preview"]  # threshold below the 0 of unrun slices
    assert infer(tmp_path / "in", tmp_path / "int16", *options) == 0  # the default
    assert infer(tmp_path / "in", tmp_path / "float32", *options, "--map-dtype", "float32") == 0

    files = {dtype: nib.load(tmp_path / dtype / "air_anomaly.nii.gz") for dtype in ("int16", "float32")}
    assert {dtype: image.get_data_dtype() for dtype, image in files.items()} == {"int16": np.int16,
                                                                                "float32": np.float32}
    exact = np.asarray(files["float32"].dataobj)
    compact = np.asarray(files["int16"].dataobj)
    step = float(files["int16"].dataobj.slope)
    assert 0 < step <= (exact.max() - exact.min()) / 65535 * (1 + 1e-6)
    assert np.abs(compact - exact).max() <= 0.51 * step
    itk = sitk.ReadImage(str(tmp_path / "int16" / "air_anomaly.nii.gz"))  # 3D Slicer's reader: scl_slope applied
    assert itk.GetPixelIDTypeAsString() == "32-bit float"
    assert np.abs(sitk_xyz(itk) - exact).max() <= step / 2 + 1e-6
    reference = sitk.ReadImage(str(scan))
    for dtype in files:
        np.testing.assert_allclose(files[dtype].affine, nib.load(scan).affine, atol=1e-5)
        for name in ("air_anomaly.nii.gz", "air_mask.nii.gz"):
            assert_same_geometry(sitk.ReadImage(str(tmp_path / dtype / name)), reference)
            assert nib.load(tmp_path / dtype / name).header.get_xyzt_units() == ("mm", "unknown")

    masks = {dtype: np.asarray(nib.load(tmp_path / dtype / "air_mask.nii.gz").dataobj) for dtype in files}
    np.testing.assert_array_equal(masks["int16"], masks["float32"])  # both from the float32 map in memory
    reports = {dtype: json.loads((tmp_path / dtype / "air_report.json").read_text()) for dtype in files}
    changed = {key for key in reports["int16"] if reports["int16"][key] != reports["float32"][key]}
    # timings may or may not differ; identity: the storage type is a setting resume compares
    assert changed - {"seconds"} == {"map_dtype", "identity"}
    assert {key for key, value in reports["int16"]["identity"]["settings"].items()
            if value != reports["float32"]["identity"]["settings"][key]} == {"map_dtype"}
    per_slice = reports["float32"]["scores"]["per_slice"]
    assert [s is None for s in per_slice] == [True] * AIR_SLICES + [False] * (12 - AIR_SLICES)

    run = exact[..., AIR_SLICES:]
    assert run.min() < -0.9  # air in a run slice: the background is below 0
    np.testing.assert_array_equal(exact[..., :AIR_SLICES], run.min())  # not 0: the map's minimum
    np.testing.assert_allclose(compact[..., :AIR_SLICES], compact[..., AIR_SLICES:].min(), atol=1e-7)
    assert not masks["float32"][..., :AIR_SLICES].any()  # the mask never marks a slice not run ...
    np.testing.assert_array_equal(masks["float32"][..., AIR_SLICES:], run > -0.5)  # ... elsewhere map > threshold


def test_preview_per_scan_linked_from_the_summary_and_the_index(tmp_path, capsys):
    source = tmp_path / "in"
    scan_with_air(source / "calm.nii.gz", seed=1, blob=0.0)
    scan_with_air(source / "blob.nii.gz", seed=2)
    (source / "broken.nii.gz").write_bytes(b"not a NIfTI")
    out = tmp_path / "out"
    assert infer(source, out, "--threshold", "0.0") == 1  # the broken file fails, the run goes on

    rows = summary_rows(out)
    finished = [row for row in rows if row["status"] == "ok"]
    assert [row["scan"] for row in finished] and len(finished) == 2
    index = (out / "index.html").read_text()
    positions = []
    for row in finished:
        assert row["preview"] == f"{row['scan']}_preview.png"
        with Image.open(out / row["preview"]) as picture:
            assert picture.format == "PNG" and picture.width > 1000
        report = json.loads((out / f"{row['scan']}_report.json").read_text())
        assert report["outputs"]["preview"] == row["preview"]
        for name in report["outputs"].values():
            assert f"href='{name}'" in index
        assert f"<img src='{row['preview']}'" in index
        positions.append(index.index(f"<img src='{row['preview']}'"))
    assert positions == sorted(positions)  # the index lists the scans in the summary's order, best score first
    broken = next(row for row in rows if row["status"] == "failed")
    assert broken["error"] and broken["preview"] == "" and broken["error"][:40] in index

    last = capsys.readouterr().out.strip().splitlines()[-1]
    best = finished[0]
    assert last.startswith("2 scans succeeded, 1 failed; ") and f"summary {out / 'summary.csv'}" in last
    assert f"index {out / 'index.html'}" in last and f"best-scoring scan {best['scan']}" in last
    assert last.endswith(str(out / best["preview"]))

    (out / "calm_preview.png").unlink()  # a missing preview makes the scan unfinished: it is redone
    stamp = (out / "blob_report.json").stat().st_mtime_ns
    assert infer(source, out, "--threshold", "0.0") == 1
    assert (out / "calm_preview.png").is_file() and (out / "blob_report.json").stat().st_mtime_ns == stamp


def test_no_preview_writes_no_picture_and_no_index(tmp_path, capsys):
    scan_with_air(tmp_path / "in" / "one.nii.gz")
    assert infer(tmp_path / "in", tmp_path / "out", "--no-preview") == 0
    assert not list((tmp_path / "out").glob("*.png")) and not (tmp_path / "out" / "index.html").exists()
    assert [row["preview"] for row in summary_rows(tmp_path / "out")] == [""]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "index" not in last and last.endswith(str(tmp_path / "out" / "one_report.json"))


def test_preview_focus_is_inside_the_body_away_from_its_end_slices():
    body = np.zeros((10, 10, 40), bool)
    body[2:8, 2:8, 5:35] = True
    anomaly = np.zeros((10, 10, 40), np.float32)
    anomaly[0, 0, 20] = 9.0  # outside the body
    anomaly[4, 4, 5] = 8.0  # the first slice with body (a skull cap)
    anomaly[3, 6, 33] = 7.0  # the last but one: within the end margin (2 of 30 slices)
    anomaly[5, 3, 12] = 1.0
    assert preview_focus(anomaly, body, (2,)) == (5, 3, 12)
    assert preview_focus(anomaly, body, ()) == (4, 4, 5)  # no sliced axis, no margin
    assert preview_focus(anomaly, np.zeros_like(body), (2,)) == (0, 0, 20)  # no body: the whole volume


@pytest.mark.parametrize("argv", [["--help"], ["infer", "--help"]])
def test_help_imports_no_torch(argv):
    code = f"""
import contextlib, io, runpy, sys
sys.argv = ["visualad-med", *{argv!r}]
with contextlib.redirect_stdout(io.StringIO()) as text:
    try:
        runpy.run_module("visualad_med", run_name="__main__")
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "timm", "monai", "highdicom", "matplotlib") if m in sys.modules))
print("usage: visualad-med" in text.getvalue())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["[]", "True"], result.stderr


def test_log_lines_are_whole_lines_without_library_chatter(tmp_path):
    pixels = np.random.default_rng(2).normal(1064.0, 5.0, (6, 20, 24)).astype(np.int16)
    write_dicom_series(tmp_path / "in" / "ct", pixels)
    command = [sys.executable, "-m", "visualad_med", "infer", str(tmp_path / "in"), str(tmp_path / "out"), *MODEL]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONWARNINGS": "default"})
    assert result.returncode == 0, result.stderr
    segments = [s for s in re.split(r"[\r\n]", result.stderr) if s.strip()]
    logged = [s for s in segments if re.match(r"(DEBUG|INFO|WARNING|ERROR) [\w.]+: ", s.lstrip())]
    assert any("loaded dicom volume" in s for s in logged) and any("scans succeeded" in s for s in logged)
    assert not [s for s in segments if "%|" in s and re.search(r"(INFO|WARNING|ERROR) [\w.]+: ", s)]  # no bar + log
    assert "INFO highdicom" not in result.stderr and "nvImageCodec" not in result.stderr  # its warnings stay
    assert list((tmp_path / "out").glob("*_seg.dcm"))
