"""The model: a frozen timm ViT with the anomaly and normal tokens, SCA and SAF per tap layer, and its maps.

Also the training-free scorings (self-similarity, cohort and reference-bank distances), head
checkpoints (safetensors, the reference's format) and backbone weights.

The exports are resolved on first use (PEP 562 module ``__getattr__``), so that importing a
light submodule (:mod:`~visualad_med.model.presets`) does not import torch and timm.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PRESETS": "presets",
    "BackboneWeightsError": "weights",
    "HeadCheckpointError": "checkpoint",
    "HeadConfig": "checkpoint",
    "shipped_head": "checkpoint",
    "VisualAD": "torch_model",
    "build_model": "visualad",
    "load_model": "visualad",
}
"""Each export and the submodule it is imported from (the error types are defined in :mod:`visualad_med.errors`)."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The export ``name``, imported from its submodule on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'visualad_med.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
