"""Training-free self-similarity scoring and its combination with the trained head."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_vit
from visualad_med import build_model
from visualad_med.model.torch_model import upsample_scores
from visualad_med.model.selfsim import default_layers, self_similarity_scores


def test_the_odd_patch_out_scores_highest():
    torch.manual_seed(0)
    common = torch.randn(1, 1, 8)
    patches = common + 0.01 * torch.randn(1, 10, 8)
    patches[0, 7] = -common[0, 0]
    scores = self_similarity_scores(patches, neighbours=3)
    assert scores.shape == (1, 10)
    assert scores.argmax().item() == 7
    assert scores[0, 7] > 1.5 and scores[0, :7].max() < 0.01


def test_a_patch_is_not_its_own_neighbour():
    patches = torch.eye(4).unsqueeze(0)
    torch.testing.assert_close(self_similarity_scores(patches, neighbours=1), torch.ones(1, 4))


def test_default_layers_are_the_middle_blocks():
    assert default_layers(12) == (6, 9)
    assert default_layers(24) == (12, 18)


def test_scorings_compose_as_documented():
    model = build_model(tiny_vit(), image_size=64)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        method = model.set_scoring("visualad")(images)["map_raw"]
        selfsim = model.set_scoring("selfsim")(images)["map_raw"]
        combined = model.set_scoring("combined", weight=0.5)(images)["map_raw"]
        tapped = model.backbone(images, model.selfsim_layers).features
    torch.testing.assert_close(combined, method + 0.5 * selfsim, atol=1e-5, rtol=0)
    prefix = model.backbone.num_prefix_tokens
    expected = sum(self_similarity_scores(tapped[layer][:, prefix:]) for layer in (2, 3)).reshape(2, 4, 4)
    torch.testing.assert_close(selfsim, upsample_scores(expected, (64, 64)))
    assert model.map_bound() == 2 * 4 + 0.5 * 2 * 2


def test_scoring_survives_the_head_round_trip(tmp_path):
    model = build_model(tiny_vit(), image_size=64).set_scoring("combined", weight=0.25)
    loaded = build_model(tiny_vit(), image_size=64).load_head(model.save_head(tmp_path / "h.safetensors"))
    assert (loaded.config.scoring, loaded.config.selfsim_weight) == ("combined", 0.25)
    with pytest.raises(ValueError, match="valid: visualad, selfsim, combined"):
        loaded.set_scoring("knn")
