"""Hostile and broken inputs through the public commands: bounded memory, no silent garbage, the batch goes on.

One test per item of the issue (1 memory, 2 silent garbage, 4 discovery, 6 2D paths, 7 loading code).
Each writes its own small files, runs ``visualad_med.apps.cli.main`` (a subprocess for the memory
peaks), and checks the exit code, that the error names the file and the reason, that the good
inputs of the same run succeed, and that every input is byte-identical afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from bad_inputs import write_dicom_series
from builders import make_mvfa, write_normal
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from visualad_med.model import checkpoint
from visualad_med.apps.cli import main
from visualad_med.io.budget import MEMORY_BUDGET_ENV
from visualad_med.io.writers import write_json
from visualad_med.model.visualad import build_model

MODEL = ["--head", "untrained", "--backbone", "vit_tiny_patch16_224", "--backbone-weights", "random",
         "--image-size", "32", "--device", "cpu", "--scoring", "visualad"]
REPO = Path(__file__).resolve().parents[1]
_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "print(r.stdout + r.stderr); print(r.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` (links not followed), by relative path."""
    hashes = {}
    for current, _, files in os.walk(folder):
        for name in files:
            path = Path(current, name)
            if path.is_file() and not path.is_symlink():
                hashes[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def good_nifti(path: Path, seed: int = 0) -> Path:
    """A small int16 NIfTI volume with noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 400, size=(20, 24, 6), dtype=np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([0.9, 0.8, 1.5, 1.0])), path)
    return path


def slices(n: int = 4, rows: int = 12, columns: int = 10) -> np.ndarray:
    return (np.arange(n * rows * columns) % 200).reshape(n, rows, columns).astype(np.int16)


def cli(*args: str | Path) -> int:
    torch.manual_seed(0)
    return main([str(a) for a in args])


def cli_peak(*args: str | Path, budget_gib: float) -> tuple[int, str, int]:
    """``python -m visualad_med ARGS`` in a child process: ``(exit code, output, peak RSS in KiB)``."""
    env = {**os.environ, MEMORY_BUDGET_ENV: str(budget_gib), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", _PEAK, sys.executable, "-m", "visualad_med", *(str(a) for a in args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=True)
    *output, code, peak = result.stdout.rstrip().splitlines()
    return int(code), "\n".join(output), int(peak)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_bomb(path: Path, side: int = 100_000) -> Path:
    """A PNG of a few dozen bytes whose header declares ``side x side`` RGB pixels (no real pixels)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0"))
                     + png_chunk(b"IEND", b""))
    return path


def compressed_giant_dicom(folder: Path, side: int = 12000) -> list[Path]:
    """Two RLE-compressed slices of a few KB whose headers declare ``side x side`` pixels each."""
    files = write_dicom_series(folder, slices(2), description="giant")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = side
        ds.PixelData = encapsulate([b"\0" * 64])
        ds.file_meta.TransferSyntaxUID = RLELossless
        ds.save_as(path, enforce_file_format=True)
    return files


# --- item 1: memory bounded by a budget estimated from the header --------------------------------------------


def test_memory_is_bounded_by_the_budget_before_decoding(tmp_path):
    budget = 0.25  # GiB above the program's own footprint
    good = tmp_path / "good"
    good_nifti(good / "good.nii.gz")
    hostile = tmp_path / "hostile"
    good_nifti(hostile / "good.nii.gz")
    giant = compressed_giant_dicom(hostile / "giant")
    bomb = hostile / "bomb.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((400, 400, 400), np.uint8), np.eye(4)), bomb)  # 64 M voxels, ~60 KB
    tilted = write_dicom_series(hostile / "tilted", slices(4, 8, 8), step=(10.0, 0.0, 0.002), description="tilted")
    before = snapshot(hostile)

    code, _, baseline = cli_peak("infer", good, tmp_path / "out_good", *MODEL, budget_gib=budget)
    assert code == 0
    code, output, peak = cli_peak("infer", hostile, tmp_path / "out", *MODEL, budget_gib=budget)
    assert code == 1
    assert "1 scans succeeded, 3 failed" in output
    assert f"{giant[0].parent}: failed: grid (12000, 12000, 2) plus stack (12000, 12000, 2) = 576000000 voxels" in output
    assert f"{bomb}: failed: header shape (400, 400, 400) = 64000000 voxels would need about 0.8 GiB" in output
    assert f"above the memory budget of 0.25 GiB (set {MEMORY_BUDGET_ENV} to change it)" in output
    assert f"{tilted[0].parent}: failed: slices step 89.99 deg away from their normal" in output
    assert (tmp_path / "out" / "good_report.json").is_file()
    assert snapshot(hostile) == before
    assert (peak - baseline) * 1024 < budget * 2**30

    image = tmp_path / "big.png"
    Image.fromarray(np.zeros((6000, 6000, 3), np.uint8)).save(image)
    small = write_normal(tmp_path / "small.png")
    code, _, baseline = cli_peak("predict", small, "--out", tmp_path / "pred_good", *MODEL, budget_gib=budget)
    assert code == 0
    code, output, peak = cli_peak("predict", image, small, "--out", tmp_path / "pred", *MODEL, budget_gib=budget)
    assert code == 1
    assert f"{image}: cannot read image: image size 6000 x 6000 = 36000000 pixels would need about 0.4 GiB" in output
    assert (tmp_path / "pred" / "small.json").is_file()
    assert (peak - baseline) * 1024 < budget * 2**30


def test_a_budget_that_is_not_a_number_is_refused(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "lots")
    image = write_normal(tmp_path / "small.png")
    assert cli("predict", image, "--out", tmp_path / "pred", *MODEL) == 1
    assert f"{MEMORY_BUDGET_ENV} must be a positive number of GiB, got 'lots'" in caplog.text


# --- item 2: no silent garbage ------------------------------------------------------------------------------


def test_short_pixel_data_infinite_rescale_and_nan_pixels_are_refused(tmp_path, caplog):
    scans = tmp_path / "scans"
    good_nifti(scans / "good.nii.gz")
    short = write_dicom_series(scans / "short", slices(), description="short")
    ds = pydicom.dcmread(short[1])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(short[1], enforce_file_format=True)
    huge = write_dicom_series(scans / "huge", slices(), description="huge")
    ds = pydicom.dcmread(huge[0])
    ds.RescaleSlope = "1e39"
    ds.save_as(huge[0], enforce_file_format=True)
    before = snapshot(scans)
    assert cli("infer", scans, tmp_path / "out", *MODEL) == 1
    assert (f"{short[1]}: failed: PixelData holds 120 bytes, fewer than Rows x Columns x SamplesPerPixel x "
            "BitsAllocated/8 = 12 x 10 x 1 x 16/8 = 240: pixels are missing") in caplog.text
    assert (f"{huge[0]}: failed: RescaleSlope 1e+39 and RescaleIntercept -1024 send stored values (up to 2^16) "
            "outside the float32 range: the voxels would be infinite") in caplog.text
    assert (tmp_path / "out" / "good_report.json").is_file()
    assert snapshot(scans) == before

    images = tmp_path / "images"
    values = np.linspace(0, 1, 32 * 40, dtype=np.float32).reshape(32, 40)
    values[5, 7] = np.nan
    nan_tiff = images / "nan.tif"
    images.mkdir()
    Image.fromarray(values, mode="F").save(nan_tiff)
    good = write_normal(images / "good.png")
    before = snapshot(images)
    caplog.clear()
    assert cli("predict", nan_tiff, good, "--out", tmp_path / "pred", *MODEL) == 1
    assert f"{nan_tiff}: cannot read image: 1 NaN or infinite pixel(s), first at (row, column) (5, 7)" in caplog.text
    assert (tmp_path / "pred" / "good.json").is_file() and not (tmp_path / "pred" / "nan.json").exists()
    assert snapshot(images) == before


def test_head_with_nan_threshold_is_refused_and_json_never_holds_nan(tmp_path, caplog):
    model = build_model("vit_tiny_patch16_224", backbone_weights="random", image_size=32)
    model.set_threshold(float("nan"))
    head = model.save_head(tmp_path / "nan_head.safetensors")
    image = write_normal(tmp_path / "images" / "good.png")
    before = snapshot(tmp_path)
    assert cli("predict", image, "--out", tmp_path / "pred", "--head", head, "--backbone-weights", "random",
               "--device", "cpu") == 2
    assert "head config field 'threshold': must be a finite number, got nan" in caplog.text
    assert snapshot(tmp_path) == before
    with pytest.raises(ValueError, match=r"report.json: not written, scores\[1\].auroc is not a finite number"):
        write_json({"scores": [{"auroc": 0.5}, {"auroc": np.float32("nan")}]}, tmp_path / "report.json")
    assert not (tmp_path / "report.json").exists()


# --- item 4: discovery neither hangs nor skips silently -----------------------------------------------------


def test_pipes_linked_folders_and_dicom_without_preamble(tmp_path, caplog):
    scans = tmp_path / "scans"
    good_nifti(scans / "direct.nii.gz")
    elsewhere = good_nifti(tmp_path / "elsewhere" / "linked.nii.gz", seed=1).parent
    (scans / "link").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "elsewhere" / "loop").symlink_to(scans, target_is_directory=True)
    os.mkfifo(scans / "pipe.nii.gz")
    bare = write_dicom_series(scans / "bare", slices(), description="bare")
    bare[0].write_bytes(bare[0].read_bytes()[132:])  # no preamble, no DICM
    before = snapshot(scans)

    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("infer hung (a named pipe was opened?)"))
    signal.alarm(120)
    try:
        with caplog.at_level(logging.INFO):
            assert cli("infer", scans, tmp_path / "out", *MODEL) == 1
    finally:
        signal.alarm(0)
    assert f"{scans / 'pipe.nii.gz'}: skipped, a named pipe (FIFO), not a regular file" in caplog.text
    assert f"{scans / 'link' / 'loop'}: skipped, a link to {scans.resolve()}, a folder already searched" in caplog.text
    assert (f"{bare[0]}: failed: no 128-byte preamble and 'DICM' prefix (not a DICOM Part 10 file), so its pixels "
            "cannot be read") in caplog.text
    assert (tmp_path / "out" / "direct_report.json").is_file()
    assert (tmp_path / "out" / "linked_report.json").is_file()
    assert snapshot(scans) == before


# --- item 6: 2D paths ---------------------------------------------------------------------------------------


def test_decompression_bombs_and_colliding_names_in_predict_and_evaluate(tmp_path, caplog):
    images = tmp_path / "images"
    bomb = png_header_bomb(images / "bomb.png")
    first, second = write_normal(images / "a" / "000.png"), write_normal(images / "b" / "000.png", shade=90)
    before = snapshot(images)
    assert bomb.stat().st_size < 80
    assert cli("predict", bomb, first, second, "--out", tmp_path / "pred", *MODEL) == 1
    assert f"{bomb}: cannot read image: decompression bomb refused (Image size (10000000000 pixels)" in caplog.text
    records = [json.loads((tmp_path / "pred" / f"{stem}.json").read_text()) for stem in ("a_000", "b_000")]
    assert [r["image"] for r in records] == [str(first), str(second)]
    assert snapshot(images) == before

    root = make_mvfa(tmp_path / "mvfa", "Brain")
    mask = png_header_bomb(root / "Brain_AD/test/Ungood/anomaly_mask/a0.png")
    before = snapshot(root)
    caplog.clear()
    code = cli("evaluate", "--data", root, "--layout", "mvfa", "--out", tmp_path / "eval", *MODEL)
    assert f"unreadable mask {mask} ({mask}: decompression bomb refused" in caplog.text
    assert code == 0 and (tmp_path / "eval" / "results.json").is_file()
    assert snapshot(root) == before


def test_predict_help_says_how_colliding_names_are_kept_apart(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "(a_000, b_000)" in " ".join(capsys.readouterr().out.split())


# --- item 7: loading code -----------------------------------------------------------------------------------


class _Scripted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return self.weight, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        print("SETSTATE RAN")
        self.weight = state[0]
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def test_torchscript_weights_are_refused_before_any_code_runs(tmp_path, monkeypatch, caplog, capfd):
    archive = tmp_path / "clip.pt"
    torch.jit.save(torch.jit.script(_Scripted()), str(archive))
    before = snapshot(tmp_path)
    calls = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: calls.append("jit.load"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append("load"))
    image = write_normal(tmp_path / "good.png")
    assert cli("predict", image, "--out", tmp_path / "pred", "--head", "untrained", "--backbone",
               "vit_tiny_patch16_224", "--backbone-weights", archive, "--image-size", "32", "--device", "cpu") == 2
    assert f"{archive} is a TorchScript archive (it holds code/), refused: loading it would run its code" in caplog.text
    assert calls == [] and "SETSTATE RAN" not in capfd.readouterr().out
    assert snapshot(tmp_path) == {**before, "good.png": snapshot(tmp_path)["good.png"]}


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("threshold", "0.5", "must be a finite number"),
        ("image_size", 10**9, "must be an integer in [1, 8192]"),
        ("taps", "3,6", "must be a list of 1 to 1024 items"),
        ("mean", [0.5, 0.5], "must be a list of 3 to 3 items"),
        ("scoring", 7, "must be one of ['visualad', 'selfsim', 'combined']"),
    ],
)
def test_every_head_config_field_is_validated_at_load(tmp_path, caplog, field, value, problem):
    model = build_model("vit_tiny_patch16_224", backbone_weights="random", image_size=32)
    bad = dataclasses.replace(model.config, **{field: value})  # a head file written by someone else's code
    head = checkpoint.save(tmp_path / "head.safetensors", model.head_state_dict(), bad)
    image = write_normal(tmp_path / "good.png")
    assert cli("predict", image, "--out", tmp_path / "pred", "--head", head, "--backbone-weights", "random",
               "--device", "cpu") == 2
    assert f"head config field {field!r}: {problem}, got {value!r}" in caplog.text


# --- issue 24: the last hostile inputs ----------------------------------------------------------------------


def test_float_pixel_data_is_named_as_not_supported(tmp_path, caplog):
    files = write_dicom_series(tmp_path / "scans" / "floats", slices(), description="floats")
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.BitsAllocated = 32
        ds.FloatPixelData = np.zeros((12, 10), dtype=np.float32).tobytes()
        ds.save_as(path, enforce_file_format=True)
    assert cli("infer", tmp_path / "scans", tmp_path / "out", *MODEL) == 1
    assert ("FloatPixelData (7FE0,0008) found: float pixel data is not supported (only PixelData, integer pixels "
            "with RescaleSlope/Intercept)") in caplog.text


def test_a_mask_far_larger_than_its_image_is_named_and_counted(tmp_path, caplog):
    root = make_mvfa(tmp_path / "mvfa", "Brain")
    mask = sorted((root / "Brain_AD/test/Ungood/anomaly_mask").iterdir())[0]
    Image.new("1", (20000, 10000)).save(mask)  # a few KB, 200 million pixels, for a 40 x 32 image
    assert cli("evaluate", "--data", root, "--layout", "mvfa", "--out", tmp_path / "out", "--overlays", "0",
               *MODEL) == 0
    assert f"unreadable mask {mask}" in caplog.text and "image kept for image metrics only" in caplog.text
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    brain = results["classes"]["Brain"]
    assert brain["counts"]["mask_problems"] == 1 and brain["mask_problems"][0]["mask"] == str(mask)


def test_a_large_grey_png_is_scored_without_full_size_float_copies(tmp_path):
    big = tmp_path / "big" / "big.png"
    big.parent.mkdir()
    Image.fromarray((np.add.outer(np.arange(6000), np.arange(6000)) % 251).astype(np.uint8)).save(big)
    small = write_normal(tmp_path / "small.png")
    code, _, baseline = cli_peak("predict", small, "--out", tmp_path / "pred_small", *MODEL, budget_gib=8)
    assert code == 0
    code, output, peak = cli_peak("predict", big, "--out", tmp_path / "pred", *MODEL, budget_gib=8)
    assert code == 0, output
    assert json.loads((tmp_path / "pred" / "big.json").read_text())["score"] is not None
    # KiB above a small image's run: 0.35 GiB with the uint8 reduction, 0.78 GiB without it
    assert (peak - baseline) < 0.6 * 2**20, f"{(peak - baseline) / 2**20:.2f} GiB above the small image's run"
