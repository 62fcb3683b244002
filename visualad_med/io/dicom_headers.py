"""Read and check the headers of a DICOM series' slices, and sort the slices along their normal.

Slices are sorted by the projection of ImagePositionPatient on the slice normal (the cross product
of the two ImageOrientationPatient cosines), never by file name or InstanceNumber.

Each slice's header is checked before any pixel is decoded: a PixelData element shorter than
``Rows x Columns x SamplesPerPixel x BitsAllocated / 8`` (uncompressed transfer syntaxes) or
running past the end of the file, a file without the 128-byte preamble, and a rescale
(``RescaleSlope``, ``RescaleIntercept``) that is not finite or sends stored values outside the
float32 range raise :class:`ScanLoadError`, and so do slices whose size, pixel spacing or
orientation differ from the first's, or whose orientation cosines are not orthonormal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from visualad_med.errors import ScanLoadError

_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
"""FloatPixelData, DoubleFloatPixelData, PixelData: dropped from the kept headers (as ``stop_before_pixels``)."""

_PREAMBLE = 128
"""Bytes before the ``DICM`` prefix of a DICOM Part 10 file."""

_GEOMETRY = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}
"""Geometry tags and their number of values."""


def _read_sorted(
    files: list[Path],
) -> tuple[list[Path], list[pydicom.Dataset], np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The checked headers of a series' files, sorted along the slice normal.

    Args:
        files: the image files of one series, in any order (at least one).

    Returns:
        ``(files, headers, positions, (row_dir, col_dir, normal))``: files and headers sorted,
        ``(N, 3)`` ImagePositionPatient in mm in that order, and the unit row and column cosines
        and the slice normal ``row x column``.

    Raises:
        ScanLoadError: an unreadable or inconsistent header, or a single slice.
    """
    headers = [_read_header(f) for f in files]
    _check_consistent(files, headers)
    if len(files) < 2:
        raise ScanLoadError(files[0], "a single 2D slice, not a volume")

    cosines = np.asarray(headers[0].ImageOrientationPatient, dtype=np.float64).reshape(2, 3)
    row_dir, col_dir = cosines / np.linalg.norm(cosines, axis=1, keepdims=True)
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    positions = np.array([h.ImagePositionPatient for h in headers], dtype=np.float64)
    order = np.argsort(positions @ normal, kind="stable")
    return [files[i] for i in order], [headers[i] for i in order], positions[order], (row_dir, col_dir, normal)


def has_preamble(path: Path) -> bool:
    """Whether ``path`` starts with the 128-byte preamble and ``DICM`` (a DICOM Part 10 file, as SimpleITK needs)."""
    with open(path, "rb") as handle:
        return handle.read(_PREAMBLE + 4)[_PREAMBLE:] == b"DICM"


def _read_header(path: Path) -> pydicom.Dataset:
    """The header of one slice, without pixel data, after the checks of the module docstring."""
    if not has_preamble(path):
        raise ScanLoadError(
            path, "no 128-byte preamble and 'DICM' prefix (not a DICOM Part 10 file), so its pixels cannot be "
            "read; rewrite it as Part 10, e.g. pydicom.dcmread(path, force=True).save_as(new, enforce_file_format=True)"
        )
    try:
        header = pydicom.dcmread(path, defer_size=1024)  # large values (the pixels) are not read
    except Exception as error:  # pydicom raises many types for broken files
        raise ScanLoadError(path, f"unreadable DICOM header ({type(error).__name__}: {error})") from error
    missing = [tag for tag in (*_GEOMETRY, "Rows", "Columns") if tag not in header]
    if missing:
        raise ScanLoadError(path, f"missing {', '.join(missing)}: no geometry to place the slice")
    for tag, count in _GEOMETRY.items():
        values = np.atleast_1d(np.asarray(header[tag].value, dtype=np.float64))
        if values.size != count or not np.isfinite(values).all():
            raise ScanLoadError(path, f"{tag} must be {count} finite numbers, got {header[tag].value!r}")
    if min(float(v) for v in header.PixelSpacing) <= 0:
        raise ScanLoadError(path, f"PixelSpacing must be positive, got {list(header.PixelSpacing)}")
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        raise ScanLoadError(path, f"multi-frame DICOM ({header.NumberOfFrames} frames) is not supported")
    if "MOSAIC" in [str(v).upper() for v in header.get("ImageType", [])]:
        raise ScanLoadError(path, "Siemens MOSAIC image (a tiled volume in one frame) is not supported")
    if int(header.get("SamplesPerPixel", 1)) != 1:
        raise ScanLoadError(path, f"SamplesPerPixel {header.SamplesPerPixel}: colour images are not supported")
    _check_rescale(path, header)
    _check_pixel_data(path, header)
    for tag in _PIXEL_TAGS:
        if tag in header:
            del header[tag]
    return header


def _check_pixel_data(path: Path, header: pydicom.Dataset) -> None:
    """A PixelData element that holds every pixel the header declares and ends inside the file."""
    element = header.get_item(0x7FE00010)
    if element is None:
        floats = [name for tag, name in ((0x7FE00008, "FloatPixelData (7FE0,0008)"),
                                         (0x7FE00009, "DoubleFloatPixelData (7FE0,0009)")) if tag in header]
        if floats:
            raise ScanLoadError(path, f"{floats[0]} found: float pixel data is not supported (only PixelData, "
                                "integer pixels with RescaleSlope/Intercept)")
        raise ScanLoadError(path, "no PixelData element")
    transfer_syntax = header.file_meta.get("TransferSyntaxUID")
    if transfer_syntax is not None and transfer_syntax.is_encapsulated:
        return  # compressed: the decoded size is checked against the memory budget instead
    length = element.length if isinstance(element, pydicom.dataelem.RawDataElement) else len(element.value or b"")
    start = getattr(element, "value_tell", None)
    size = path.stat().st_size
    if start is not None and start + length > size:
        raise ScanLoadError(
            path, f"pixel data unreadable (file truncated: PixelData of {length} bytes at byte {start}, file has {size})"
        )
    rows, columns = int(header.get("Rows", 0)), int(header.get("Columns", 0))
    samples, bits = int(header.get("SamplesPerPixel", 1)), int(header.get("BitsAllocated", 16))
    frames = int(header.get("NumberOfFrames", 1) or 1)
    needed = -(-rows * columns * samples * frames * bits // 8)
    if length < needed:
        raise ScanLoadError(
            path, f"PixelData holds {length} bytes, fewer than Rows x Columns x SamplesPerPixel x BitsAllocated/8 = "
            f"{rows} x {columns} x {samples} x {bits}/8 = {needed}: pixels are missing"
        )


def _check_rescale(path: Path, header: pydicom.Dataset) -> None:
    """Finite ``RescaleSlope`` and ``RescaleIntercept`` that keep every stored value inside float32."""
    try:
        slope = float(header.get("RescaleSlope", 1) or 1)
        intercept = float(header.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError) as error:
        raise ScanLoadError(path, f"RescaleSlope/RescaleIntercept are not numbers ({error})") from error
    bits = int(header.get("BitsStored", header.get("BitsAllocated", 16)))
    largest = abs(slope) * 2.0**bits + abs(intercept)
    if not (np.isfinite(slope) and np.isfinite(intercept) and largest < np.finfo(np.float32).max):
        raise ScanLoadError(
            path, f"RescaleSlope {slope:g} and RescaleIntercept {intercept:g} send stored values (up to 2^{bits}) "
            "outside the float32 range: the voxels would be infinite"
        )


def _check_consistent(files: list[Path], headers: list[pydicom.Dataset]) -> None:
    """Same size, pixel spacing and orientation on every slice; orthonormal cosines."""
    first = headers[0]
    cosines = np.asarray(first.ImageOrientationPatient, dtype=np.float64).reshape(2, 3)
    norms = np.linalg.norm(cosines, axis=1)
    if np.any(np.abs(norms - 1) > 1e-3) or abs(cosines[0] @ cosines[1]) > 1e-3:
        orientation = list(first.ImageOrientationPatient)
        raise ScanLoadError(files[0], f"ImageOrientationPatient {orientation} is not orthonormal")
    reference = files[0].name
    for path, header in zip(files[1:], headers[1:]):
        if (header.Rows, header.Columns) != (first.Rows, first.Columns):
            raise ScanLoadError(
                path,
                f"image size {header.Rows}x{header.Columns} differs from {first.Rows}x{first.Columns} of {reference}",
            )
        if not np.allclose(header.PixelSpacing, first.PixelSpacing, rtol=1e-4):
            raise ScanLoadError(
                path, f"PixelSpacing {list(header.PixelSpacing)} differs from {list(first.PixelSpacing)} of {reference}"
            )
        if not np.allclose(header.ImageOrientationPatient, first.ImageOrientationPatient, atol=1e-4):
            raise ScanLoadError(
                path,
                f"ImageOrientationPatient {list(header.ImageOrientationPatient)} differs from "
                f"{list(first.ImageOrientationPatient)} of {reference}",
            )

