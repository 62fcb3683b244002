"""Write result volumes in their scan's geometry (NIfTI, Slicer ``.seg.nrrd``, DICOM SEG) and tables.

Every writer goes through :func:`visualad_med.io.atomic.atomic_path`: the file is written under a
temporary name in the output folder and renamed, so a crash never leaves a partial file.
Volumes are ``(X, Y, Z)`` arrays with the ``(4, 4)`` RAS affine of the loaded scan
(:func:`~visualad_med.io.load_scan`); NIfTI stores RAS, NRRD and DICOM store LPS.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from isal import igzip
from monai.data.utils import orientation_ras_lps

from .atomic import atomic_path

__all__ = ["ANOMALY_COLOR", "MAP_DTYPES", "write_json", "write_nifti", "write_seg_nrrd", "write_summary_csv"]

logger = logging.getLogger(__name__)

SOFTWARE = "visualad_med"
"""The software that writes the outputs, as DICOM and NRRD headers name it."""

MAP_DTYPES = ("float32", "int16")
"""How :func:`write_nifti` stores a floating volume: float32, or int16 with a NIfTI scale (lossy by ~half a step)."""

GZIP_LEVEL = 2
"""ISA-L's compression level for ``.nii.gz`` (0-3): as fast as its level 1 on anomaly maps, and smaller."""

ANOMALY_COLOR = (0.9, 0.2, 0.2)
"""Colour of the anomaly segment, RGB in [0, 1], the same in the ``.seg.nrrd`` and the DICOM SEG."""


def write_nifti(volume: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor, path: Path | str,
                float_dtype: str = "float32") -> Path:
    """Write an ``(X, Y, Z)`` volume as NIfTI (``.nii`` or ``.nii.gz``) with nibabel.

    Floating volumes (anomaly maps) are stored as ``float_dtype``: ``float32``, or ``int16``
    with ``scl_slope`` and ``scl_inter`` over the volume's range, chosen and applied by nibabel as
    it writes (a step of ``(max - min) / 65535``; every value within half a step, plus the float32
    rounding of the header's scale, of the float32 one), which nibabel and ITK (SimpleITK,
    3D Slicer) decode on reading. NIfTI-1 has no float16 type. Boolean and integer volumes
    (masks, labelmaps) are stored as uint8. The affine goes into both sform and qform (code 1,
    scanner); spatial units are mm (``xyzt_units``). A ``.nii.gz`` is compressed by ISA-L
    (``isal.igzip``, :data:`GZIP_LEVEL`): a standard gzip stream, seven times faster than the
    zlib nibabel would use (0.3 s instead of 2.0 s for a 137 MB head CT map). Written with
    nibabel directly: MONAI's ``NibabelWriter`` takes 3D data for 2D and fails when the affine's
    top-left 2 x 2 block is singular, as for every coronal or sagittal scan.

    Args:
        volume: ``(X, Y, Z)`` array.
        affine: ``(4, 4)`` voxel index to RAS mm, the loaded scan's affine.
        path: output file, ending in ``.nii`` or ``.nii.gz``.
        float_dtype: how a floating volume is stored, one of :data:`MAP_DTYPES`.

    Returns:
        ``path``.

    Raises:
        ValueError: for a bad path, ``float_dtype`` or affine, or a NaN or infinite value in a
            floating volume stored as int16 (nibabel would store NaN as 0 and clip infinities).
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"NIfTI path must end in .nii or .nii.gz, got {path.name!r}.")
    if float_dtype not in MAP_DTYPES:
        raise ValueError(f"float_dtype must be one of {MAP_DTYPES}, got {float_dtype!r}.")
    array = spatial_volume(volume)
    affine = affine_matrix(affine)
    stored = None
    if array.dtype.kind == "f" and float_dtype == "int16":
        _check_finite(array)
        stored = np.int16  # nibabel scales the values onto int16 as it writes them, a block at a time
    elif array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
    else:
        array = _labels(array)
    image = nib.Nifti1Image(array, affine, dtype=stored)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units(xyz="mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        if path.name.lower().endswith(".gz"):
            with igzip.open(temporary, "wb", compresslevel=GZIP_LEVEL) as stream:
                image.to_stream(stream)
        else:
            nib.save(image, str(temporary))
    return path


def write_seg_nrrd(
    mask: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor,
    path: Path | str,
    name: str = "anomaly",
    color: tuple[float, float, float] = ANOMALY_COLOR,
) -> Path:
    """Write a binary mask as a 3D Slicer segmentation (``.seg.nrrd``, one segment, label 1).

    The NRRD is gzip-compressed, ``space: left-posterior-superior`` with space directions and
    origin converted from the RAS affine, and carries Slicer's ``Segment0_*`` fields (ID, Name,
    Color, LabelValue, Layer, Extent) and ``Segmentation_*`` fields.

    Args:
        mask: ``(X, Y, Z)`` array, nonzero inside the segment.
        affine: ``(4, 4)`` voxel index to RAS mm, the loaded scan's affine.
        path: output file, ending in ``.seg.nrrd``.
        name: segment name shown in Slicer.
        color: segment colour, RGB in [0, 1].

    Returns:
        ``path``.
    """
    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise ValueError(f"Slicer segmentation path must end in .seg.nrrd, got {path.name!r}.")
    check_color(color)
    volume = spatial_volume(mask)
    labels = np.empty(volume.shape[::-1], dtype=bool)  # (Z, Y, X), SimpleITK's order
    np.not_equal(volume.transpose(2, 1, 0), 0, out=labels)  # one pass, one copy, whatever the mask's layout
    lps = orientation_ras_lps(affine_matrix(affine))
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(labels.view(np.uint8))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    fields = {
        "Segment0_ID": "Segment_1",
        "Segment0_Name": name,
        "Segment0_NameAutoGenerated": "0",
        "Segment0_Color": " ".join(f"{c:g}" for c in color),
        "Segment0_ColorAutoGenerated": "0",
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
        "Segment0_Extent": _extent(labels.transpose(2, 1, 0)),
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for key, value in fields.items():
        image.SetMetaData(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)
    return path


def write_json(data: Any, path: Path | str) -> Path:
    """Write ``data`` as indented JSON; numpy and torch scalars and arrays, and paths, are converted.

    Raises:
        ValueError: ``data`` holds a NaN or infinite number, which JSON cannot represent (Python's
            bare ``NaN`` makes the file invalid); the message names its key. Nothing is written.
    """
    path = Path(path)
    try:
        text = json.dumps(data, indent=2, default=_json_default, allow_nan=False)
    except ValueError as error:
        where = _non_finite_key(data)
        raise ValueError(f"{path}: not written, {where or 'a value'} is not a finite number ({error})") from error
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        temporary.write_text(text + "\n", encoding="utf-8")
    return path


def write_summary_csv(
    rows: Iterable[Mapping[str, Any]], path: Path | str, fieldnames: Sequence[str] | None = None
) -> Path:
    """Write rows of a table as CSV with a header.

    Args:
        rows: one mapping per row.
        path: output file.
        fieldnames: column order; default every key in order of first appearance.

    Returns:
        ``path``.
    """
    path = Path(path)
    rows = list(rows)
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows({key: _plain(value) for key, value in row.items()} for row in rows)
    return path


def spatial_volume(volume: np.ndarray | torch.Tensor) -> np.ndarray:
    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if array.ndim != 3:
        raise ValueError(f"volume must be (X, Y, Z), got shape {array.shape}.")
    return array


def affine_matrix(affine: np.ndarray | torch.Tensor) -> np.ndarray:
    matrix = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    matrix = matrix.astype(np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ValueError(f"affine must be a finite invertible (4, 4) matrix, got {matrix.tolist()}.")
    return matrix


def check_color(color: Sequence[float]) -> None:
    if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
        raise ValueError(f"color must be three values in [0, 1], got {color}.")


def _check_finite(array: np.ndarray) -> None:
    """Raise ValueError unless ``array`` is non-empty and finite (its minimum and maximum are)."""
    if not array.size or not (np.isfinite(array.min()) and np.isfinite(array.max())):
        raise ValueError(f"only a non-empty finite map can be stored as int16, got shape {array.shape} with "
                         f"{int(array.size - np.isfinite(array).sum())} non-finite values")


def _labels(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array.view(np.uint8)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"label values must be in [0, 255], got [{array.min()}, {array.max()}].")
    return array.astype(np.uint8, copy=False)


def _extent(labels: np.ndarray) -> str:
    """Slicer's ``Segment0_Extent``: inclusive bounding box ``x0 x1 y0 y1 z0 z1`` of the segment."""
    if not labels.any():
        return "0 -1 0 -1 0 -1"
    bounds = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(labels.any(axis=other))
        bounds += [int(hits[0]), int(hits[-1])]
    return " ".join(str(b) for b in bounds)


def _plain(value: Any) -> Any:
    """Python form of numpy/torch scalars and arrays and of paths; other values unchanged."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def _non_finite_key(data: Any, where: str = "") -> str | None:
    """The key path (``"a.b[2]"``) of the first NaN or infinite number in ``data``, or ``None``."""
    data = _plain(data)
    if isinstance(data, Mapping):
        items = ((f"{where}.{key}" if where else str(key), value) for key, value in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"{where}[{index}]", value) for index, value in enumerate(data))
    else:
        return where or "the value" if isinstance(data, float) and not np.isfinite(data) else None
    return next((found for key, value in items if (found := _non_finite_key(value, key))), None)


def _json_default(value: Any) -> Any:
    plain = _plain(value)
    if plain is value:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")
    return plain
