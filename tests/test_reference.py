"""Body-referenced maps: the body mask, the median subtraction, and the model option end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_vit

from visualad_med.model.torch_model import top_fraction_mean
from visualad_med.model.visualad import build_model
from visualad_med.model.body_reference import body_mask, reference_to_body

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _normalised(grey: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` grey levels in [0, 1] -> normalised ``(B, 3, H, W)`` images."""
    rgb = grey.unsqueeze(1).expand(-1, 3, -1, -1)
    return (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_body_is_what_is_brighter_than_a_tenth_of_the_brightest():
    grey = torch.zeros(2, 20, 20)
    grey[0, 5:15, 5:15] = 0.8
    grey[0, 0, 0] = 0.07
    body = body_mask(_normalised(grey), MEAN, STD)
    assert body[0].sum() == 100 and body[0, 5:15, 5:15].all() and not body[0, 0, 0]
    assert body[1].all()


def test_an_image_with_a_speck_of_body_is_referenced_to_its_whole_area():
    grey = torch.zeros(1, 20, 20)
    grey[0, 3, 3] = 1.0
    assert body_mask(_normalised(grey), MEAN, STD).all()


def test_reference_subtracts_the_median_over_the_body_only():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 100.0]], [[5.0, 5.0], [7.0, 9.0]]])
    body = torch.tensor([[[True, True], [True, False]], [[True, True], [True, True]]])
    expected = maps - torch.tensor([2.0, 5.0]).view(2, 1, 1)
    torch.testing.assert_close(reference_to_body(maps, body), expected)


def test_model_map_and_score_follow_the_map_reference(tmp_path):
    model = build_model(tiny_vit(), image_size=64).eval()
    grey = torch.zeros(2, 64, 64)
    grey[:, 8:56, 12:52] = torch.rand(2, 48, 40) * 0.5 + 0.5
    images = _normalised(grey)
    with torch.inference_mode():
        raw = model(images)
        referenced = model.set_map_reference("body")(images)
    body = body_mask(images, model.config.mean, model.config.std)
    torch.testing.assert_close(referenced["map"], reference_to_body(raw["map"], body))
    torch.testing.assert_close(referenced["score"], top_fraction_mean(referenced["map"]))
    torch.testing.assert_close(referenced["map_raw"], raw["map_raw"])
    assert not torch.allclose(referenced["map"], raw["map"])
    assert model.map_bound() == 2 * 2 * len(model.taps)
    loaded = build_model(tiny_vit(), image_size=64).load_head(model.save_head(tmp_path / "h.safetensors"))
    assert loaded.config.map_reference == "body"
    with pytest.raises(ValueError, match="valid: none, body"):
        loaded.set_map_reference("organ")
