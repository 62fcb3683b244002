"""Read a DICOM SEG the way its clients do: highdicom's ``get_volume`` and dcmqi's ``segimage2itkimage``.

dcmqi is the converter of 3D Slicer's QuantitativeReporting (PyPI ``dcmqi``, the ``dcmqi`` extra).
It exits 0 even when it writes no labelmap, so :func:`read_with_dcmqi` checks for the file.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk


def dcmqi_tool(name: str = "segimage2itkimage") -> Path | None:
    """Path of a dcmqi binary: on ``PATH`` or inside the installed ``dcmqi`` package; ``None`` if absent."""
    found = shutil.which(name)
    if found:
        return Path(found)
    spec = importlib.util.find_spec("dcmqi")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / name
    return binary if binary.is_file() else None


def require_dcmqi() -> Path:
    """The ``segimage2itkimage`` binary; skips the test when dcmqi is not installed."""
    tool = dcmqi_tool()
    if tool is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed (pip install 'visualad-med[test]', or pip install dcmqi)")
    return tool


def read_with_highdicom(path: Path) -> sitk.Image:
    """The SEG's labelmap from ``highdicom.seg.segread(path).get_volume()``, as a SimpleITK image (LPS)."""
    volume = hd.seg.segread(path).get_volume(combine_segments=True)
    affine = volume.affine  # (frame, row, column) index to LPS mm; SimpleITK indexes (column, row, frame)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[::-1]
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection((affine[:3, 2::-1] / spacing).flatten().tolist())
    return image


def read_with_dcmqi(path: Path, out_dir: Path, tool: Path) -> tuple[sitk.Image, dict]:
    """Run ``segimage2itkimage`` on the SEG; its labelmap (segment group 1) and its ``meta.json``.

    Raises:
        AssertionError: when dcmqi fails, reports an error or writes no labelmap, with its output.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [str(tool), "--inputDICOM", str(path), "--outputDirectory", str(out_dir)],
        capture_output=True, text=True, timeout=300,
    )
    output = run.stdout + run.stderr
    labelmap = out_dir / "1.nrrd"
    if run.returncode != 0 or "ERROR" in output or not labelmap.is_file():
        raise AssertionError(f"segimage2itkimage (exit {run.returncode}) wrote no labelmap:\n{output}")
    return sitk.ReadImage(str(labelmap)), json.loads((out_dir / "meta.json").read_text())
