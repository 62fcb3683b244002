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
