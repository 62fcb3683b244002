"""The model: a frozen timm ViT with the anomaly and normal tokens, SCA and SAF per tap layer, and its maps.

Also the training-free scorings (self-similarity, cohort and reference-bank distances), head
checkpoints (safetensors, the reference's format) and backbone weights.
"""

from .backbone import PRESETS
from .checkpoint import HeadCheckpointError, HeadConfig, shipped_head
from .torch_model import VisualAD
from .visualad import build_model, load_model
from .weights import BackboneWeightsError

__all__ = ["PRESETS", "BackboneWeightsError", "HeadCheckpointError", "HeadConfig", "VisualAD", "build_model",
           "load_model", "shipped_head"]
