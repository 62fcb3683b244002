"""Float maps as int16 with a NIfTI scale: ``value = stored * scl_slope + scl_inter``.

A float32 anomaly map of a head CT (512 x 562 x 239 voxels) is 231 MB gzipped: its low mantissa
bits are noise that gzip cannot compress. Stored as int16 over the map's own range, the same map
is 104 MB, written in 4.6 to 9.0 s instead of 9.7 to 11.3 s (two shared cores), with every value
within half a step (``(max - min) / 65534``, 9.4e-5 on that map) of the float32 one
(``benchmarks/map_storage.py``).
NIfTI-1 has no float16 type, so int16 with ``scl_slope`` and ``scl_inter``, which nibabel and ITK
(SimpleITK, 3D Slicer) apply on reading, is the compact form.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .layout import array_order

INT16_LIMIT = 32767
"""Largest stored magnitude; -32768 is left unused so the range is symmetric about ``scl_inter``."""

_CHUNK = 1 << 22
"""Values quantised at a time: the float64 temporaries stay at ~64 MB whatever the map's size."""


class Quantised(NamedTuple):
    """An int16 array and the scale that maps it back: ``values = stored * slope + inter``.

    Attributes:
        stored: int16 array, the shape of the input.
        slope: NIfTI ``scl_slope`` (a float32, as the header stores it).
        inter: NIfTI ``scl_inter`` (a float32).
    """

    stored: np.ndarray
    slope: np.float32
    inter: np.float32


def quantise_int16(values: np.ndarray) -> Quantised:
    """Quantise a finite float array over its own range onto int16 ``[-32767, 32767]``.

    The slope and intercept are rounded to float32 first (the header's type) and the values
    quantised with the rounded ones, so decoding with the header's numbers is within half a step
    of ``values``. A constant array is stored as zeros with slope 1 and the constant as intercept.

    Raises:
        ValueError: ``values`` is empty or holds a NaN or infinite value.
    """
    values = np.asarray(values)
    low, high = (float(values.min()), float(values.max())) if values.size else (np.nan, np.nan)
    if not (np.isfinite(low) and np.isfinite(high)):  # min and max are NaN or infinite when any value is
        raise ValueError(f"only a non-empty finite array can be quantised, got shape {values.shape} with "
                         f"{int(np.size(values) - np.isfinite(values).sum())} non-finite values")
    inter = np.float32((low + high) / 2)
    slope = np.float32((high - low) / (2 * INT16_LIMIT)) if high > low else np.float32(1.0)
    while high > low and float(slope) * INT16_LIMIT < max(high - float(inter), float(inter) - low):
        slope = np.nextafter(slope, np.float32(np.inf))  # the float32 rounding must not cut the range
    order = array_order(values)  # the input's layout: no copy
    flat = values.reshape(-1, order=order)
    stored = np.empty(flat.shape, dtype=np.int16)
    scaled = np.empty(min(_CHUNK, flat.size), dtype=np.float64)
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start:start + _CHUNK]
        part = scaled[:chunk.size]
        part[...] = chunk  # float64 from here on (a ufunc on float32 inputs would compute in float32)
        np.subtract(part, float(inter), out=part)
        np.divide(part, float(slope), out=part)
        np.rint(part, out=part)
        np.clip(part, -INT16_LIMIT, INT16_LIMIT, out=part)
        stored[start:start + chunk.size] = part
    return Quantised(stored.reshape(values.shape, order=order), slope, inter)
