"""visualad_med: zero-shot anomaly detection on medical scans with VisualAD.

Public API: :func:`build_model`, :func:`load_model`, :class:`VisualAD`
(``model(images)``, ``model.load_head``, ``model.save_head``, ``model.preprocess``).
Subpackages in the order data flows: :mod:`visualad_med.io` (files in and out),
:mod:`visualad_med.transforms` (MONAI transforms, volume to slices), :mod:`visualad_med.model`,
:mod:`visualad_med.inference` (scans and folders through the model), :mod:`visualad_med.training`,
:mod:`visualad_med.datasets`, :mod:`visualad_med.evaluation`, :mod:`visualad_med.apps` (the
``visualad-med`` command and the bundle's glue).
"""

__version__ = "0.1.0"

from visualad_med.model import (  # noqa: E402  (after __version__, which the writers record)
    PRESETS,
    BackboneWeightsError,
    HeadCheckpointError,
    HeadConfig,
    VisualAD,
    build_model,
    load_model,
)

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
