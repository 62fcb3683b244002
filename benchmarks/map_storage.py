"""Size, write time and error of each way to store an anomaly map, and how SimpleITK reads each back.

Takes a float32 map written by ``visualad-med infer --map-dtype float32`` (and its scan, for the
body) and writes it again per option: ``float32``, ``int16`` (NIfTI scl_slope/scl_inter over the
map's range), and, for comparison only, both cropped to the body's bounding box (which moves the
map off the scan's grid). float16 is not an option: NIfTI-1 has no half-float type (nibabel
refuses it). For each: file size, write time (``write_nifti``, gzip), the peak memory the write
adds (a child process that loads the map and writes it, under ``/usr/bin/time -v``, minus one that
only loads it), largest difference from the float32 map, whether SimpleITK (3D Slicer's reader,
ITK's NiftiImageIO) decodes the same values with the same geometry, and how many voxels a mask
taken from the stored map at ``--threshold`` would differ by (the run's mask is always taken from
the float32 map).

    python benchmarks/map_storage.py SCAN ANOMALY_FLOAT32_NII --threshold T [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from visualad_med.io import load_scan
from visualad_med.io.sources import ScanSource
from visualad_med.io.discover import find_scans
from visualad_med.io.writers import write_nifti
from visualad_med.model.body_reference import volume_body_mask


def body_box(scan: Path) -> tuple[slice, slice, slice]:
    """The bounding box of the scan's body (windowed as the run did), as index slices of its grid."""
    source: ScanSource = find_scans(scan)[0]
    loaded = load_scan(source)
    body = volume_body_mask(loaded.volume[0], (loaded.window.low, loaded.window.high)).numpy()
    box = []
    for axis in range(3):
        hits = np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


_WRITE = ("import sys; import numpy as np; from visualad_med.io.writers import write_nifti; "
          "values = np.load(sys.argv[1]); "
          "sys.argv[3] == 'none' or write_nifti(values, np.load(sys.argv[2]), sys.argv[4], float_dtype=sys.argv[3])")
"""A child's work: load the map (``.npy``, its memory layout kept) and write it as ``argv[3]`` (``none``: only load)."""


def peak_mib(values: Path, affine: Path, dtype: str, path: Path) -> float:
    """Peak resident memory (MiB, ``/usr/bin/time -v``) of a child that loads ``values`` and writes ``dtype``."""
    command = ["/usr/bin/time", "-v", sys.executable, "-c", _WRITE, str(values), str(affine), dtype, str(path)]
    stderr = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1)) / 1024


def write_peak_mib(values: np.ndarray, affine: np.ndarray, dtype: str, path: Path) -> float:
    """The peak memory (MiB) that writing ``values`` as ``dtype`` adds to holding them, each in a fresh process."""
    arrays = path.with_name(f"{path.name}.npy"), path.with_name(f"{path.name}.affine.npy")
    np.save(arrays[0], values)
    np.save(arrays[1], affine)
    try:
        return peak_mib(*arrays, dtype, path) - peak_mib(*arrays, "none", path)
    finally:
        for array in arrays:
            array.unlink()


def measure(values: np.ndarray, affine: np.ndarray, dtype: str, path: Path, threshold: float) -> dict:
    """Write ``values`` as ``dtype``; size, time, added peak memory, error, SimpleITK read-back and mask change."""
    extra_mib = write_peak_mib(values, affine, dtype, path)
    started = time.perf_counter()
    write_nifti(values, affine, path, float_dtype=dtype)
    seconds = time.perf_counter() - started
    read = np.asarray(nib.load(path).dataobj)
    image = sitk.ReadImage(str(path))
    by_itk = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    return {
        "option": dtype, "megabytes": round(path.stat().st_size / 1e6, 1), "write_s": round(seconds, 2),
        "write_peak_extra_mib": round(extra_mib, 1),
        "max_abs_error": float(np.abs(read - values).max()),
        "itk_pixel_type": image.GetPixelIDTypeAsString(),
        "itk_max_abs_difference_from_nibabel": float(np.abs(by_itk - read).max()),
        "itk_geometry_equal": bool(np.allclose(image.GetSpacing(), spacing, atol=1e-5)
                                   and np.allclose(np.reshape(image.GetDirection(), (3, 3)), lps / spacing, atol=1e-5)
                                   and np.allclose(image.GetOrigin(), [-affine[0, 3], -affine[1, 3], affine[2, 3]],
                                                   atol=1e-4)),
        "xyzt_units": list(nib.load(path).header.get_xyzt_units()),
        "mask_voxels_differing": int(((read > threshold) != (values > threshold)).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", type=Path, help="the scan (a DICOM folder or a volume file)")
    parser.add_argument("anomaly", type=Path, help="its float32 <scan>_anomaly.nii.gz")
    parser.add_argument("--threshold", type=float, required=True, help="the run's mask threshold")
    parser.add_argument("--out", type=Path, default=None, help="folder for the files (default: a temporary one)")
    args = parser.parse_args()
    image = nib.load(args.anomaly)
    values = np.asarray(image.dataobj, dtype=np.float32)
    affine = image.affine
    box = body_box(args.scan)
    cropped_affine = affine.copy()
    cropped_affine[:3, 3] = affine[:3, :3] @ [s.start for s in box] + affine[:3, 3]
    with tempfile.TemporaryDirectory() as temporary:
        out = args.out or Path(temporary)
        out.mkdir(parents=True, exist_ok=True)
        rows = [measure(values, affine, dtype, out / f"map_{dtype}.nii.gz", args.threshold)
                for dtype in ("float32", "int16")]
        for dtype in ("float32", "int16"):
            row = measure(values[box], cropped_affine, dtype, out / f"map_{dtype}_body.nii.gz", args.threshold)
            rows.append({**row, "option": f"{dtype}, cropped to the body {[s.stop - s.start for s in box]}"})
    print(json.dumps({"shape": list(values.shape), "range": [float(values.min()), float(values.max())],
                      "options": rows}, indent=2))


if __name__ == "__main__":
    main()
