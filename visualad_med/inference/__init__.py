"""Scans and folders through the model: the slice inferer, one scan, a folder of scans, cohorts, 2D images.

The exports are resolved on first use (PEP 562 module ``__getattr__``), so the command line reads
:class:`RunSettings`' defaults without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"RunSettings": "settings", "SliceInferer": "slices", "SliceScores": "slices", "run_folder": "folder"}

__all__ = ["RunSettings", "SliceInferer", "SliceScores", "run_folder"]


def __getattr__(name: str) -> Any:
    """The export ``name``, imported from its module on first use."""
    if name in _HOMES:
        value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
