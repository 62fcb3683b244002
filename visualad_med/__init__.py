"""visualad_med: zero-shot anomaly detection on medical scans with VisualAD.

Public API: :func:`build_model`, :func:`load_model`, :class:`VisualAD`
(``model(images)``, ``model.load_head``, ``model.save_head``, ``model.preprocess``).
Subpackages in the order data flows: :mod:`visualad_med.io` (files in and out),
:mod:`visualad_med.transforms` (MONAI transforms, volume to slices), :mod:`visualad_med.model`,
:mod:`visualad_med.inference` (scans and folders through the model), :mod:`visualad_med.training`,
:mod:`visualad_med.datasets`, :mod:`visualad_med.evaluation`, :mod:`visualad_med.apps` (the
``visualad-med`` command and the bundle's glue).

The exports are resolved on first use (PEP 562 module ``__getattr__``): ``import visualad_med``
and ``visualad-med --help`` do not import torch or timm; ``from visualad_med import build_model``
imports the model then.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "BackboneWeightsError",
    "HeadCheckpointError",
    "HeadConfig",
    "VisualAD",
    "build_model",
    "load_model",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """The model export ``name``, imported from :mod:`visualad_med.model` on first use."""
    if name in __all__:
        value = getattr(importlib.import_module("visualad_med.model"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'visualad_med' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
