"""The memory budget: the most memory one scan or image may need, estimated from its header before decoding.

A file's header says how many voxels (pixels) it holds; a few kilobytes can declare gigabytes
(a DICOM slice of 12000 x 12000, a gzip bomb, a PNG header bomb). Readers call
:func:`budget_problem` with the header's count before any pixel is decoded and refuse the
file (with the returned reason) when the estimate exceeds the budget, so the run goes on
with the next file instead of exhausting the machine's memory.

The estimate is ``count x cost``, the cost per voxel (pixel) being the measured peak of
``infer`` (``predict``) above the program's own footprint (``benchmarks/peak_memory.py``).
The budget is ``VISUALAD_MED_MEMORY_BUDGET_GB`` GiB (``2**30`` bytes) when that variable is
set, else :data:`DEFAULT_MEMORY_BUDGET_GB`; it does not include the program and the model
(about 1 GiB with the default backbone).
"""

from __future__ import annotations

import math
import os

__all__ = [
    "BYTES_PER_PIXEL",
    "BYTES_PER_VOXEL",
    "DEFAULT_MEMORY_BUDGET_GB",
    "MEMORY_BUDGET_ENV",
    "budget_problem",
    "memory_budget",
]

MEMORY_BUDGET_ENV = "VISUALAD_MED_MEMORY_BUDGET_GB"
"""Environment variable holding the budget in GiB (a positive number, e.g. ``2`` or ``0.5``)."""

DEFAULT_MEMORY_BUDGET_GB = 8.0
"""Budget in GiB when :data:`MEMORY_BUDGET_ENV` is not set."""

BYTES_PER_VOXEL = 14
"""Peak memory of ``infer`` per voxel of a scan (bytes, ``benchmarks/peak_memory.py`` on a 500 x 500 x 250
float32 NIfTI: 13.0, rounded up)."""

BYTES_PER_PIXEL = 12
"""Peak memory of ``predict`` per pixel of a 2D image (bytes, ``benchmarks/peak_memory.py`` on a 6000 x 6000
RGB PNG: 10.6, rounded up)."""


def memory_budget() -> int:
    """The budget in bytes, from :data:`MEMORY_BUDGET_ENV` or the default.

    Raises:
        ValueError: the variable is set to something that is not a positive finite number.
    """
    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if not text:
        return int(DEFAULT_MEMORY_BUDGET_GB * 2**30)
    try:
        gib = float(text)
    except ValueError:
        gib = math.nan
    if not math.isfinite(gib) or gib <= 0:
        raise ValueError(f"{MEMORY_BUDGET_ENV} must be a positive number of GiB, got {text!r}")
    return int(gib * 2**30)


def budget_problem(count: int, bytes_each: int, what: str, unit: str = "voxels") -> str | None:
    """Why ``count`` voxels (pixels) of ``bytes_each`` bytes do not fit the budget, or ``None`` when they do.

    Args:
        count: voxels (pixels) the header declares.
        bytes_each: peak bytes per voxel (pixel), :data:`BYTES_PER_VOXEL` or :data:`BYTES_PER_PIXEL`.
        what: the declared size in words, e.g. ``"shape (512, 512, 300)"``, quoted in the reason.
        unit: ``"voxels"`` or ``"pixels"``, for the reason.
    """
    budget = memory_budget()
    needed = int(count) * int(bytes_each)
    if needed <= budget:
        return None
    return (
        f"{what} = {count} {unit} would need about {needed / 2**30:.1f} GiB ({bytes_each} bytes each), above "
        f"the memory budget of {budget / 2**30:.3g} GiB (set {MEMORY_BUDGET_ENV} to change it)"
    )
