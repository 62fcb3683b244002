"""Volumes in either memory layout: reductions that ignore the order run in the order of memory.

A DICOM volume is Fortran-ordered (each ``(X, Y)`` plane contiguous, as decoded and as NIfTI
stores it: :meth:`~visualad_med.io.dicom_series.DicomSeries.to_grid`), a NIfTI volume read by
MONAI C-ordered; maps follow their scan. Some library reductions copy a non-C-ordered array
before running (numpy's ``argmax``, boolean indexing across layouts, torch's ``reshape(-1)``),
which costs a second per CT volume; these helpers avoid that.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["argmax_index", "array_order", "flat_in_memory_order"]


def array_order(array: np.ndarray) -> str:
    """``"F"`` for a Fortran-ordered array that is not also C-ordered, else ``"C"`` (numpy's ``order``)."""
    return "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"


def argmax_index(array: np.ndarray) -> tuple[int, ...]:
    """Index of the largest value of ``array``, the first in memory order among equals.

    Without a copy: numpy's ``argmax`` copies a Fortran-ordered array into C order first.
    """
    order = array_order(array)
    flat = int(np.argmax(array.ravel(order=order)))
    return tuple(int(i) for i in np.unravel_index(flat, array.shape, order=order))


def flat_in_memory_order(values: torch.Tensor) -> torch.Tensor:
    """``values`` as 1D in the order of its memory: a view for any dense layout (e.g. a transposed volume)."""
    order = sorted(range(values.ndim), key=lambda axis: -values.stride(axis))
    return values.permute(order).reshape(-1)
