"""Peak memory per voxel of ``infer`` on a NIfTI volume and per pixel of ``predict`` on a PNG.

Each command runs in a fresh subprocess with the tiny random model; its peak resident memory
(``ru_maxrss`` of the child) on a large input minus that on a tiny input, divided by the
voxels (pixels) of the large input, is the cost per voxel (pixel) that the memory budget of
:mod:`visualad_med.io.budget` uses.

Usage::

    python benchmarks/peak_memory.py [--voxels-side 200] [--pixels-side 4000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

MODEL = ["--head", "untrained", "--backbone", "vit_tiny_patch16_224", "--backbone-weights", "random",
         "--image-size", "32", "--device", "cpu", "--scoring", "visualad"]
_PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_kib(command: list[str]) -> int:
    """Peak resident memory (KiB, Linux ``ru_maxrss``) of ``command`` run in a child process."""
    result = subprocess.run([sys.executable, "-c", _PEAK, *command], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1])


def write_volume(path: Path, side: int) -> int:
    """A ``(side, side, side // 2)`` int16 NIfTI with noise; returns its voxel count."""
    shape = (side, side, max(side // 2, 2))
    data = np.random.default_rng(0).integers(0, 1000, size=shape, dtype=np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return int(np.prod(shape))


def write_png(path: Path, side: int) -> int:
    """A ``side x side`` RGB PNG with a gradient; returns its pixel count."""
    ramp = (np.arange(side, dtype=np.uint32) % 256).astype(np.uint8)
    Image.fromarray(np.stack([np.add.outer(ramp, ramp).astype(np.uint8)] * 3, axis=-1)).save(path)
    return side * side


def per_unit(work: Path, kind: str, large_side: int) -> dict:
    """Peak of ``infer`` (``kind="volume"``) or ``predict`` (``"image"``), tiny and large, and bytes per unit."""
    peaks, units = {}, {}
    for label, side in (("tiny", 16), ("large", large_side)):
        folder = work / f"{kind}_{label}"
        folder.mkdir()
        if kind == "volume":
            units[label] = write_volume(folder / "scan.nii.gz", side)
            command = [sys.executable, "-m", "visualad_med", "infer", str(folder), str(work / f"out_{kind}_{label}"),
                       "--overwrite", *MODEL]
        else:
            units[label] = write_png(folder / "image.png", side)
            command = [sys.executable, "-m", "visualad_med", "predict", str(folder / "image.png"), "--out",
                       str(work / f"out_{kind}_{label}"), *MODEL]
        peaks[label] = peak_kib(command)
    extra = (peaks["large"] - peaks["tiny"]) * 1024
    return {"kind": kind, "units": units["large"], "peak_tiny_mib": peaks["tiny"] / 1024,
            "peak_large_mib": peaks["large"] / 1024, "bytes_per_unit": extra / (units["large"] - units["tiny"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels-side", type=int, default=200, help="volume is side x side x side/2")
    parser.add_argument("--pixels-side", type=int, default=4000, help="image is side x side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        for kind, side in (("volume", args.voxels_side), ("image", args.pixels_side)):
            print(json.dumps(per_unit(work, kind, side)), flush=True)


if __name__ == "__main__":
    main()
