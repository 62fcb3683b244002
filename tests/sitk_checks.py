"""Geometry checks of written volumes against SimpleITK's reading of the input (shared by the volume tests)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

ATOL = 1e-4
"""Tolerance in mm (origin, spacing) and in direction cosines."""


def geometry(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array(image.GetOrigin()), np.array(image.GetSpacing()), np.array(image.GetDirection())


def assert_same_geometry(actual: sitk.Image, expected: sitk.Image) -> None:
    for got, want, what in zip(geometry(actual), geometry(expected), ("origin", "spacing", "direction")):
        np.testing.assert_allclose(got, want, atol=ATOL, err_msg=what)


def sitk_xyz(image: sitk.Image) -> np.ndarray:
    """SimpleITK's ``(Z, Y, X)`` array as ``(X, Y, Z)``."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def on_grid(image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """``image``'s voxels as an ``(X, Y, Z)`` array on ``reference``'s grid, zero outside ``image``.

    Only exact placements pass: ``image`` is flipped or permuted (no resampling) to the
    reference's axis order, must then have its spacing and direction, and its origin must lie
    on a reference voxel (to 1e-3 voxel) with all of ``image`` inside the reference.
    """
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(reference.GetDirection())
    image = sitk.DICOMOrient(image, orientation)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=ATOL, err_msg="spacing")
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=ATOL, err_msg="direction")
    index = np.array(reference.TransformPhysicalPointToContinuousIndex(image.GetOrigin()))
    np.testing.assert_allclose(index, np.round(index), atol=1e-3, err_msg="origin off the reference voxels")
    start = np.round(index).astype(int)
    array = sitk_xyz(image)
    if np.any(start < 0) or np.any(start + array.shape > reference.GetSize()):
        raise AssertionError(f"image of size {array.shape} at index {start} leaves the reference {reference.GetSize()}")
    placed = np.zeros(reference.GetSize(), array.dtype)
    placed[tuple(slice(s, s + n) for s, n in zip(start, array.shape))] = array
    return placed
