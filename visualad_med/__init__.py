"""visualad_med: zero-shot anomaly detection on medical scans with VisualAD.

Public API: :func:`build_model`, :func:`load_model`, :class:`VisualAD`
(``model(images)``, ``model.load_head``, ``model.save_head``, ``model.preprocess``).
"""

from .backbone import PRESETS
from .checkpoint import HeadCheckpointError, HeadConfig
from .model import VisualAD, build_model, load_model
from .weights import BackboneWeightsError

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
