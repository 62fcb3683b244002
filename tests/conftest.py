"""Shared fixtures: tiny random backbones and the location of ``../shared``."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from visualad_med.model.torch_model import VisualAD

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def tiny_vit(**overrides) -> VisionTransformer:
    """A 4-block, width-64 ViT with patch 16 on a 4 x 4 grid; seeded, random weights."""
    torch.manual_seed(0)
    args = dict(
        img_size=64,
        patch_size=16,
        embed_dim=64,
        depth=4,
        num_heads=2,
        num_classes=0,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    )
    args.update(overrides)
    return VisionTransformer(**args)


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the checkout; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (it holds the real data and fixtures)")
    return SHARED


@pytest.fixture
def brightness_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every model's map the windowed brightness of its input (channel 0, normalisation undone)."""

    def forward(self: VisualAD, images: torch.Tensor, settings=None) -> dict[str, torch.Tensor]:
        maps = images[:, 0] * self.config.std[0] + self.config.mean[0]
        return {"map": maps, "score": maps.flatten(1).amax(1)}

    monkeypatch.setattr(VisualAD, "forward", forward)
