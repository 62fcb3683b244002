"""Slices per second of whole folder runs against the model alone, and peak memory of a long CT.

Pipeline: :func:`visualad_med.inference.folder.run_folder` over a folder (one scan, e.g. CQ500,
or many, e.g. the 15 volumes of ``lgg_volumes_msd``), head alone: read each scan, window, slice,
run the model, reassemble the map on the voxel grid, write the NIfTI map and mask, the seg.nrrd
(and the DICOM SEG for DICOM input), the quick-look PNG (``--no-preview``: without) and the
report, overlapped across scans as ``infer`` does.
Model alone: the same model on the very slices the pipeline feeds it (recorded scan by scan on a
first pass), in the same batches, under ``torch.inference_mode`` and the same autocast, timed call
by call including the copy of maps and scores back to the CPU. Slices per second count the slices
that went through the model (slices without body are left out by both). Target: folder >= 0.9 x
model alone. Peak RSS is the process's high-water mark after the run.

Memory: a synthetic 512 x 512 x N CT (an int16 NIfTI in HU) through the whole scan path of
``infer`` (:func:`run_folder`: read, infer, write every output, the quick look too) in a fresh
process (Linux); resident memory once the model is loaded and has run one batch, then the peak
(``VmHWM``, its mark reset after loading) of the run; the difference is what the scan costs
beyond the model (budget 2 GB for N = 600).

    python benchmarks/bench_volume.py                       # CQ500 head CT, dinov2-s14 at 224 and 448
    python benchmarks/bench_volume.py --input ../shared/data/lgg_volumes_msd/imagesTr   # a folder of 15
    python benchmarks/bench_volume.py --synthetic 256       # a synthetic 512 x 512 x 256 CT instead
    python benchmarks/bench_volume.py --models "" --memory-slices 600   # memory only
    python benchmarks/bench_volume.py --precision bf16      # the model under bf16 autocast, both ways
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from visualad_med import build_model
from visualad_med.inference.folder import run_folder
from visualad_med.inference.settings import RunSettings
from visualad_med.inference.slices import SliceInferer, slice_preprocessing
from visualad_med.io import ScanSource, find_scans, load_scan
from visualad_med.model.devices import autocast, inference_precision, resolve_device

CQ500 = Path(__file__).resolve().parents[2] / "shared" / "data" / "volumes" / "cq500_head_ct_dicom"
MEMORY_BUDGET_GB = 2.0
SPACING_MM = (0.45, 0.45, 0.625)


def phantom_slice(k: int, slices: int, side: int = 512) -> torch.Tensor:
    """``(side, side)`` HU: air, an elliptical head of 30 HU tissue with 10 HU noise and a 1000 HU skull.

    The head's section shrinks towards both ends of the stack, as a head's does.
    """
    scale = 0.35 + 0.6 * np.sin(np.pi * (k + 0.5) / slices)
    y, x = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    radius = torch.sqrt((x / (0.75 * scale)) ** 2 + (y / (0.9 * scale)) ** 2)
    image = torch.full((side, side), -1000.0)
    image[radius < 1.0] = 1000.0
    brain = radius < 0.93
    image[brain] = 30.0 + 10.0 * torch.randn(int(brain.sum()), generator=torch.Generator().manual_seed(k))
    return image


def write_synthetic(folder: Path, slices: int) -> ScanSource:
    """The synthetic CT as an int16 NIfTI in ``folder`` (so that the pipeline reads it like any scan)."""
    data = np.empty((512, 512, slices), np.int16)
    for k in range(slices):
        data[:, :, k] = phantom_slice(k, slices).numpy()
    path = folder / f"synthetic_{slices}.nii"
    nib.save(nib.Nifti1Image(data, np.diag([*SPACING_MM, 1.0])), path)
    (source,) = find_scans(path)
    return source


class SliceRecorder(nn.Module):
    """Stands in for the model: keeps the batches the inferer feeds it and answers with zero maps."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.config = model.config
        self.batches: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor, settings=None) -> dict[str, torch.Tensor]:
        self.batches.append(images.cpu().clone())
        size = self.config.image_size
        return {"map": torch.zeros(images.shape[0], size, size), "score": torch.zeros(images.shape[0])}


def model_alone_seconds(model: nn.Module, batches: list[torch.Tensor], device: torch.device,
                        precision: str) -> float:
    """Seconds of the model over ``batches``, each call as the inferer makes it (after one warm-up call)."""
    total = 0.0
    for index, batch in enumerate([batches[0], *batches]):
        started = time.perf_counter()
        with torch.inference_mode(), autocast(device, precision):
            outputs = model(batch.to(device))
        outputs["map"].float().cpu(), outputs["score"].float().cpu()
        if index:
            total += time.perf_counter() - started
    return total


def model_alone(model: nn.Module, scans: list[ScanSource], settings: RunSettings, device: torch.device) -> tuple:
    """``(slices, seconds)`` of the model alone on every slice the pipeline runs, scan by scan."""
    slices, seconds = 0, 0.0
    inferer = SliceInferer(replace(settings, progress=False), device)
    for source in scans:
        scan = load_scan(source, window=settings.window)
        recorder = SliceRecorder(model)
        inferer(scan.volume, recorder, slice_preprocessing(model.config, (scan.window.low, scan.window.high)))
        if recorder.batches:
            slices += sum(len(batch) for batch in recorder.batches)
            seconds += model_alone_seconds(model, recorder.batches, device, inferer.precision)
    return slices, seconds


def throughput(model_name: str, scans: list[ScanSource], window: str, batch_size: int, device: torch.device,
               precision: str, preview: bool) -> dict:
    """Folder-run and model-alone slices per second of one model on ``scans``."""
    model = build_model(model_name).to(device).eval()
    settings = RunSettings(window=window, batch_size=batch_size, progress=False, overwrite=True, precision=precision,
                           preview=preview)
    slices, model_seconds = model_alone(model, scans, settings, device)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run = run_folder(model, scans, Path(out), settings)
        folder_seconds = time.perf_counter() - started
        reports = [json.loads(path.read_text()) for path in Path(out).glob("*_report.json")]
    if run.failed or sum(r["seconds"]["slices_run"] for r in reports) != slices:
        raise RuntimeError(f"the folder run failed {run.failed} scans or ran other slices than the recording pass")
    part = {key: sum(r["seconds"][key] for r in reports) for key in ("load", "inference", "model", "write")}
    return {"model": model_name, "scans": len(scans), "slices": slices, "model_alone_s": model_seconds,
            "folder_s": folder_seconds, **{f"{key}_s": value for key, value in part.items()},
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def resident_gib(key: str = "VmRSS") -> float:
    """Resident memory of this process, GiB: now (``VmRSS``) or its high-water mark (``VmHWM``)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(f"{key}:"))
    return int(line.split()[1]) / 2**20


def memory_child(model_name: str, slices: int, batch_size: int, device: torch.device) -> dict:
    """Peak resident memory (GiB) of a synthetic CT going through a folder run, and what it starts from.

    Loading the model leaves a high-water mark well above what stays resident (weights are
    converted on the way), so the mark is reset (``/proc/self/clear_refs``, Linux) once the model
    has run one batch and the CT is on disk; ``VmHWM`` then holds the peak of the scan's run alone
    (``getrusage`` maxrss is not reset by it).
    """
    model = build_model(model_name).to(device).eval()
    size = model.config.image_size
    with torch.inference_mode():
        model(torch.zeros(batch_size, 3, size, size, device=device))
    loading_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    with tempfile.TemporaryDirectory() as folder:
        source = write_synthetic(Path(folder), slices)
        with_model = resident_gib()
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (and ru_maxrss) to the current RSS
        started = time.perf_counter()
        settings = RunSettings(window="brain", batch_size=batch_size, progress=False, preview=True)
        run_folder(model, [source], Path(folder) / "out", settings)
        peak = resident_gib("VmHWM")
        report = json.loads((Path(folder) / "out" / f"{source.name}_report.json").read_text())
    return {"model": model_name, "slices": slices, "loading_peak_gib": loading_peak, "with_model_gib": with_model,
            "peak_gib": peak, "volume_gib": 512 * 512 * slices * 4 / 2**30,
            "slices_run": report["seconds"]["slices_run"], "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="dinov2-s14-224,dinov2-s14-448",
                        help="comma-separated presets; empty: memory only")
    parser.add_argument("--input", type=Path, default=CQ500, help="a scan or a folder of scans")
    parser.add_argument("--synthetic", type=int, default=None, help="use a synthetic 512 x 512 x N CT instead")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--no-preview", action="store_true", help="folder runs without the quick-look PNG")
    parser.add_argument("--memory-slices", type=int, default=600, help="0 skips the memory measurement")
    parser.add_argument("--memory-model", default="dinov2-s14-224")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_model, args.memory_slices, args.batch_size, device)))
        return

    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"precision {args.precision} ({inference_precision(device, args.precision)})")
    with tempfile.TemporaryDirectory() as folder:
        if args.synthetic:
            scans, window = [write_synthetic(Path(folder), args.synthetic)], "brain"
        elif args.input.exists():
            scans, window = find_scans(args.input), "auto"
        else:
            scans = []
            print(f"{args.input} is absent: throughput skipped (use --synthetic N)")
        for name in [m.strip() for m in args.models.split(",") if m.strip()] if scans else []:
            r = throughput(name, scans, window, args.batch_size, device, args.precision, not args.no_preview)
            model_rate, folder_rate = r["slices"] / r["model_alone_s"], r["slices"] / r["folder_s"]
            print(f"{r['model']} on {r['scans']} scan(s) under {args.input.name if not args.synthetic else 'synthetic'}"
                  f", {r['slices']} slices with body:\n"
                  f"  model alone {model_rate:.2f} slices/s ({r['model_alone_s']:.1f} s)\n"
                  f"  folder run  {folder_rate:.2f} slices/s ({r['folder_s']:.1f} s wall; per scan summed: read "
                  f"{r['load_s']:.1f}, infer {r['inference_s']:.1f} (model {r['model_s']:.1f}), write "
                  f"{r['write_s']:.1f})\n"
                  f"  ratio folder / model alone {folder_rate / model_rate:.3f} (target >= 0.9); peak RSS "
                  f"{r['peak_rss_gib']:.2f} GiB")
    if args.memory_slices:
        command = [sys.executable, __file__, "--memory-child", "--memory-slices", str(args.memory_slices),
                   "--memory-model", args.memory_model, "--batch-size", str(args.batch_size), "--device", args.device]
        m = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        beyond = m["peak_gib"] - m["with_model_gib"]
        print(f"memory, synthetic 512x512x{m['slices']} CT ({m['volume_gib']:.2f} GiB as float32) through "
              f"a folder run (read, infer, write) with {m['model']}: peak RSS {m['peak_gib']:.2f} GiB, "
              f"{m['with_model_gib']:.2f} GiB "
              f"resident with the model loaded (loading peaked at {m['loading_peak_gib']:.2f} GiB) -> "
              f"{beyond:.2f} GiB beyond the model (budget {MEMORY_BUDGET_GB:.0f} GB: "
              f"{'within' if beyond * 2**30 / 1e9 <= MEMORY_BUDGET_GB else 'OVER'}); {m['slices_run']} slices in "
              f"{m['seconds']:.0f} s")


if __name__ == "__main__":
    main()
