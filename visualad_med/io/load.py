"""Read a scan through MONAI's ``LoadImage`` into a :class:`Scan`, or say why it cannot be read.

A :class:`Scan` carries the volume, the DICOM series behind it (to reference it in a DICOM SEG)
and its intensity window, resolved once on the whole volume. Every loaded volume is ``(1, X, Y, Z)`` float32 with a ``(4, 4)`` RAS affine (voxel index to mm,
MONAI's convention; voxel centres at integer indices) and meta keys ``Modality`` (``""`` when the
format has none), ``scan_name`` and MONAI's usual ``affine``, ``original_affine``,
``spatial_shape``, ``space``, ``filename_or_obj``. Arrays keep the file's axis order (no
reorientation): a NIfTI as stored, a DICOM series as ``(column, row, slice)`` on the grid of
:class:`~visualad_med.io.dicom_series.DicomSeries` (slices increasing along the normal).
DICOM volumes also carry ``SeriesInstanceUID``, ``gantry_tilt_deg`` and ``interpolated_slices``.

Voxels that are NaN or infinite are an error, not replaced: the intensities are undefined and any
value put in their place would be scored by the anomaly detector as if it had been measured.

Before any voxel is decoded, the header's voxel count is checked against the memory budget of
:mod:`visualad_med.io.budget` (``VISUALAD_MED_MEMORY_BUDGET_GB``, default 8 GiB); a scan above it
is refused with the estimate in the reason.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor, NibabelReader
from monai.transforms import LoadImage
from monai.utils import ImageMetaKey, MetaKeys

from visualad_med.transforms import ResolvedWindow, resolve_intensity_window
from visualad_med.transforms.ct_window import REGION_KEYS

from .budget import BYTES_PER_VOXEL, budget_problem
from .dicom_series import MAX_GAP_SLICES, DicomSeries
from .discover import find_scans
from .sitk_reader import SimpleITKReader
from visualad_med.errors import ScanLoadError

from .sources import ScanSource

__all__ = ["MAX_VOXELS", "Scan", "load_scan"]

logger = logging.getLogger(__name__)

MAX_VOXELS = 1 << 31
"""Largest volume read (8 GiB as float32); a header declaring more is taken as corrupt."""

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Scan:
    """One loaded scan, with what every later step needs of it.

    Attributes:
        source: where it was found.
        volume: ``(1, X, Y, Z)`` float32 ``MetaTensor`` with its RAS affine (HU for CT).
        series: the DICOM series it was read from (frames, positions, datasets), ``None`` for other formats.
        window: the intensity window resolved on the whole volume; ``None`` when loaded without one
            (label volumes).
    """

    source: ScanSource
    volume: MetaTensor
    series: DicomSeries | None
    window: ResolvedWindow | None


@functools.cache
def _loader() -> LoadImage:
    return LoadImage(image_only=True, ensure_channel_first=True)


def load_scan(
    source: ScanSource | Path | str,
    *,
    window: str | Sequence[float] | None = "auto",
    max_gap_slices: int = MAX_GAP_SLICES,
    max_voxels: int = MAX_VOXELS,
) -> Scan:
    """Load one scan: its ``(1, X, Y, Z)`` float32 volume with its RAS affine, series and window.

    Args:
        source: a scan from :func:`~visualad_med.io.find_scans`, or a path holding exactly one.
        window: ``auto`` (CT, by Modality or Hounsfield units: the window of its body region;
            percentiles otherwise; :func:`~visualad_med.transforms.auto_window`), ``percentile``, a CT preset
            or ``(width, level)`` in HU (:func:`~visualad_med.transforms.resolve_intensity_window`);
            ``None`` for none (label volumes).
        max_gap_slices: most consecutive missing DICOM slices filled by interpolation.
        max_voxels: largest number of voxels a header may declare.

    Returns:
        The scan; see the module docstring for the volume's layout and meta keys.

    Raises:
        ScanLoadError: for any input that is not one readable 3D scalar volume, naming the file
            and the reason (truncated or empty file, mixed slice sizes, 4D or 2D image, NaN or
            infinite voxels, wrong compression, implausible header, above the memory budget, ...).
    """
    if not isinstance(source, ScanSource):
        found = find_scans(source)
        if len(found) != 1:
            raise ScanLoadError(source, f"expected one scan, found {len(found)}: {[s.name for s in found]}")
        source = found[0]
    for path in source.files:
        if not path.is_file():
            raise ScanLoadError(path, "no such file")
        if path.stat().st_size == 0:
            raise ScanLoadError(path, "empty file (0 bytes)")
    series = None
    try:
        if source.kind == "dicom":
            image, series = _load_dicom(source, max_gap_slices)
        elif source.kind == "nifti":
            image = _load_nifti(source.files[0], max_voxels)
        else:
            image = _load_sitk(source.files[0], max_voxels)
    except ScanLoadError:
        raise
    except Exception as error:  # readers raise many types for broken files
        raise ScanLoadError(source.path, f"unreadable ({type(error).__name__}: {error})") from error
    _check_finite(image, source.path)
    image.meta["Modality"] = source.modality or ""
    image.meta["scan_name"] = source.name
    if series is not None:  # the body region's words, for the window of ``auto`` (transforms.ct_window)
        image.meta.update({key: str(series.datasets[0].get(key, "") or "") for key in REGION_KEYS})
    logger.info("%s: loaded %s volume %s", source.name, source.kind, tuple(image.shape[1:]))
    return Scan(source, image, series, None if window is None else resolve_intensity_window(image, window))


def _load_dicom(source: ScanSource, max_gap_slices: int) -> tuple[MetaTensor, DicomSeries]:
    """Decode the series' pixels with :class:`SimpleITKReader` and place them on the series' grid.

    The reader is called directly, not through ``LoadImage``: the decoded stack only feeds
    :meth:`DicomSeries.to_grid`, and ``LoadImage``'s tensor conversion would first copy it into
    C order (1.3 s on CQ500's 512 x 512 x 238 slices).
    """
    series = DicomSeries.from_files(tuple(source.files), max_gap_slices=max_gap_slices)
    _check_series_budget(source.path, series)
    reader = SimpleITKReader()
    try:
        stack, stack_meta = reader.get_data(reader.read(list(series.files)))
    except RuntimeError as error:
        raise ScanLoadError(
            _first_unreadable(series.files) or source.path, f"pixel data unreadable ({_sitk_message(error)})"
        ) from error
    first = series.datasets[0]
    expected = (first.Columns, first.Rows, len(series.files))
    if stack.shape != expected:
        raise ScanLoadError(source.path, f"pixel stack has shape {stack.shape}, headers say {expected}")
    volume = series.to_grid(stack)
    meta = {key: value for key, value in stack_meta.items() if key != MetaKeys.AFFINE}
    meta.update(
        {
            ImageMetaKey.FILENAME_OR_OBJ: str(series.files[0]),
            MetaKeys.ORIGINAL_AFFINE: series.affine,
            MetaKeys.SPATIAL_SHAPE: np.asarray(series.shape),
            "spacing": np.linalg.norm(series.affine[:3, :3], axis=0),
            "SeriesInstanceUID": source.series_uid or str(first.SeriesInstanceUID),
            "gantry_tilt_deg": series.tilt_deg,
            "interpolated_slices": series.interpolated_slices,
        }
    )
    return MetaTensor(torch.from_numpy(volume)[None], affine=torch.as_tensor(series.affine), meta=meta), series


def _check_series_budget(folder: Path, series: DicomSeries) -> None:
    """The grid and the decoded stack (``Columns x Rows x N``) together within the memory budget."""
    first = series.datasets[0]
    stack = int(first.Columns) * int(first.Rows) * len(series.files)
    voxels = int(np.prod(series.shape, dtype=np.int64)) + stack
    what = f"grid {series.shape} plus stack {(int(first.Columns), int(first.Rows), len(series.files))}"
    problem = budget_problem(voxels, BYTES_PER_VOXEL, what)
    if problem:
        raise ScanLoadError(folder, problem)


def _first_unreadable(files: tuple[Path, ...]) -> Path | None:
    """The first file SimpleITK cannot read on its own (to name the culprit of a failed series)."""
    for path in files:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError:
            return path
    return None


def _sitk_message(error: Exception) -> str:
    """The last line of a SimpleITK exception, which holds ITK's message without the source location."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _load_nifti(path: Path, max_voxels: int) -> MetaTensor:
    """Check the header before anything is allocated, then read with MONAI's ``NibabelReader``."""
    if path.name.lower().endswith(".gz"):
        with path.open("rb") as handle:
            if handle.read(2) != _GZIP_MAGIC:
                raise ScanLoadError(path, "named .gz but not gzip-compressed")
    try:
        header = nib.load(path).header
    except Exception as error:  # nibabel raises many types for broken headers
        raise ScanLoadError(path, f"unreadable NIfTI header ({type(error).__name__}: {error})") from error
    shape = tuple(int(n) for n in header.get_data_shape())
    dtype = header.get_data_dtype()
    _check_shape(path, shape, components=1, max_voxels=max_voxels)
    if dtype.kind not in "biuf":
        raise ScanLoadError(path, f"voxel type {dtype} is not a scalar number")
    if not path.name.lower().endswith(".gz"):
        needed = int(header.get_data_offset()) + int(np.prod(shape)) * dtype.itemsize
        size = path.stat().st_size
        if size < needed:
            declared = f"{needed} bytes (shape {shape}, {dtype})"
            raise ScanLoadError(path, f"truncated: header declares {declared}, file has {size}")
    return _loader()(str(path), reader=NibabelReader(squeeze_non_spatial_dims=True))


def _load_sitk(path: Path, max_voxels: int) -> MetaTensor:
    """Check the header with SimpleITK's ``ReadImageInformation``, then read the voxels."""
    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    try:
        info.ReadImageInformation()
    except RuntimeError as error:
        raise ScanLoadError(path, f"unreadable header ({_sitk_message(error)})") from error
    size = tuple(info.GetSize())
    if len(size) > 3:
        raise ScanLoadError(path, f"a {len(size)}D image (size {size}); one 3D volume per file is supported")
    _check_shape(path, size, components=info.GetNumberOfComponents(), max_voxels=max_voxels)
    return _loader()(str(path), reader=SimpleITKReader())


def _check_shape(path: Path, shape: tuple[int, ...], *, components: int, max_voxels: int) -> None:
    """One 3D scalar volume of plausible size; a trailing run of singleton dimensions is allowed."""
    spatial = shape[:3]
    if len(shape) < 3 or min(spatial) < 2:
        raise ScanLoadError(path, f"a 2D image (shape {shape}), not a volume")
    if int(np.prod(shape[3:], dtype=np.int64)) > 1:
        raise ScanLoadError(path, f"a {len(shape)}D image (shape {shape}); one 3D volume per file is supported")
    if components != 1:
        raise ScanLoadError(path, f"{components} components per voxel (colour or vector image); scalar volumes only")
    voxels = int(np.prod(spatial, dtype=np.int64))
    if voxels > max_voxels:
        raise ScanLoadError(path, f"header declares shape {shape} = {voxels} voxels, above the limit {max_voxels}")
    problem = budget_problem(voxels, BYTES_PER_VOXEL, f"header shape {shape}")
    if problem:
        raise ScanLoadError(path, problem)


def _check_finite(image: torch.Tensor, path: Path) -> None:
    """Raise for NaN or infinite voxels, naming the first.

    A sum over a NaN or infinite voxel is not finite, so a finite sum (one pass, no mask) clears the
    volume; a volume whose sum is not (a NaN, an infinity, or an overflow of huge finite voxels) is searched.
    """
    if bool(torch.isfinite(image.sum())):
        return
    finite = torch.isfinite(image)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        raise ScanLoadError(
            path, f"{bad.shape[0]} NaN or infinite voxel(s), first at (X, Y, Z) {tuple(bad[0, 1:].tolist())}"
        )
