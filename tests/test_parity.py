"""Our forward pass, losses and gradients against the reference implementation's golden tensors."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from visualad_med import build_model
from visualad_med.training.losses import visualad_losses

CASES = ["grid14_native", "grid18_resized_pos"]


def _clip_tower() -> VisionTransformer:
    """The fixture's architecture: OpenAI-CLIP-style tower, width 128, 4 blocks, patch 16."""
    return VisionTransformer(
        img_size=224,
        patch_size=16,
        embed_dim=128,
        depth=4,
        num_heads=2,
        pre_norm=True,
        act_layer="quick_gelu",
        num_classes=64,
        dynamic_img_size=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-5),
    )


@pytest.fixture(params=CASES)
def case(request, shared_dir):
    folder = shared_dir / "fixtures" / "parity" / request.param
    inputs = torch.load(folder / "inputs.pt", weights_only=True)
    expected = torch.load(folder / "expected.pt", weights_only=True)
    taps = tuple(int(t) for t in expected["tap_layers"])
    model = build_model(
        _clip_tower(),
        backbone_weights=folder / "backbone_openai_clip.pt",
        image_size=inputs["images"].shape[-1],
        taps=taps,
    )
    model.load_head(folder / "head.pt")
    return model, inputs, expected


def test_forward_matches_reference(case):
    model, inputs, expected = case
    with torch.no_grad():
        tapped, anomaly, normal, _ = model.backbone(inputs["images"])
        out = model(inputs["images"])
    torch.testing.assert_close(anomaly, expected["anomaly_token_out"], atol=1e-5, rtol=0)
    torch.testing.assert_close(normal, expected["normal_token_out"], atol=1e-5, rtol=0)
    for tap in model.taps:
        torch.testing.assert_close(tapped[tap], expected[f"tapped_sequence.{tap}"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["tokens"][tap][:, 0], expected[f"sca_anomaly.{tap}"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["tokens"][tap][:, 1], expected[f"sca_normal.{tap}"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["patch_scores"][tap], expected[f"patch_scores.{tap}"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["map_raw"], expected["map_sum"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["map"], expected["map_smoothed"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["score"], expected["image_score"], atol=1e-4, rtol=0)


def test_losses_and_token_gradients_match_reference(case):
    model, inputs, expected = case
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    losses = visualad_losses(model(inputs["images"]), inputs["masks"], inputs["labels"])
    for name in ("seg", "image", "contrast"):
        torch.testing.assert_close(losses[name], expected[f"loss_{name}"], atol=1e-4, rtol=0)
    losses["total"].backward()
    for token, key in ((model.backbone.anomaly_token, "grad_anomaly_token"), (model.backbone.normal_token, "grad_normal_token")):
        relative = (token.grad - expected[key]).norm() / expected[key].norm()
        assert relative < 1e-4, f"{key}: relative error {relative:.2e}"


def test_reference_head_round_trips_through_our_format(case, tmp_path):
    model, inputs, expected = case
    path = model.save_head(tmp_path / "head.safetensors")
    clone = build_model(model.backbone.vit, image_size=model.image_size, taps=model.taps)
    clone.load_head(path)
    with torch.no_grad():
        torch.testing.assert_close(clone(inputs["images"])["map"], expected["map_smoothed"], atol=1e-4, rtol=0)
