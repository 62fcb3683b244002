"""The model on tiny random backbones it builds itself: shapes, smoothing, checkpoints, bad input."""

from __future__ import annotations

import dataclasses
import json
import os

import huggingface_hub
import numpy as np
import pytest
import scipy.ndimage
import torch
from safetensors.torch import save_file

from conftest import tiny_vit
from visualad_med import BackboneWeightsError, HeadCheckpointError, build_model
from visualad_med.model.smoothing import GaussianSmoothing
from visualad_med.model.weights import backbone_state, weights_sha256


@pytest.fixture
def model():
    return build_model(tiny_vit(), image_size=64)


def _images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_outputs_have_documented_shapes(model):
    with torch.no_grad():
        out = model(_images())
    assert out["map_raw"].shape == (2, 64, 64)
    assert out["map"].shape == (2, 64, 64)
    assert out["score"].shape == (2,)
    assert set(out["patch_scores"]) == {1, 2, 3, 4}
    assert all(s.shape == (2, 4, 4) for s in out["patch_scores"].values())
    assert out["probability"].min() >= 0 and out["probability"].max() <= 1
    torch.testing.assert_close(out["map_raw"].abs().max() <= 2 * 4, torch.tensor(True))


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout(model):
    images = _images()
    with torch.no_grad():
        first, second = model(images)["map"], model(images)["map"]
        torch.testing.assert_close(first, second, atol=0, rtol=0)
        model.train()
        assert not torch.equal(model(images)["map_raw"], model(images)["map_raw"])
    assert not model.backbone.vit.training


def test_only_head_parameters_are_trainable(model):
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(name.startswith("backbone.vit.") for name in trainable)
    groups = model.trainable_parameters()
    assert sum(p.numel() for g in groups.values() for p in g) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 37, 50), (2, 8, 5), (1, 1, 1)])
def test_smoothing_matches_scipy_including_boundaries(shape):
    maps = torch.randn(*shape, dtype=torch.float64).float()
    ours = GaussianSmoothing(sigma=4.0)(maps).numpy()
    for index in range(shape[0]):
        reference = scipy.ndimage.gaussian_filter(maps[index].numpy().astype(np.float64), sigma=4)
        np.testing.assert_allclose(ours[index], reference, atol=1e-5)


def test_inputs_other_than_the_trained_size_resample_positions(model):
    with torch.no_grad():
        out = model(_images(size=96))
    assert out["map"].shape == (2, 96, 96)
    assert out["patch_scores"][4].shape == (2, 6, 6)


@pytest.mark.parametrize(
    "vit_args",
    [
        dict(reg_tokens=4, no_embed_class=True),
        dict(init_values=1e-5),
        dict(pre_norm=True, act_layer="quick_gelu"),
    ],
    ids=["registers", "layer-scale", "clip-pre-norm"],
)
def test_backbone_variants(vit_args):
    model = build_model(tiny_vit(**vit_args), image_size=64)
    tapped, anomaly, _, _ = model.backbone(_images())
    assert tapped[4].shape[1] == 2 + model.backbone.vit.num_prefix_tokens + 16
    torch.testing.assert_close(anomaly, tapped[4][:, 0])
    assert model(_images())["map"].shape == (2, 64, 64)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(3, 64, 64), "shape"),
        (torch.zeros(1, 1, 64, 64), "shape"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float"),
        (torch.zeros(1, 3, 70, 64), "multiple of the patch size"),
    ],
)
def test_bad_images_raise_clear_errors(model, images, message):
    with pytest.raises(ValueError, match=message):
        model(images)


def test_head_round_trip_restores_outputs_and_threshold(model, tmp_path):
    model.set_threshold(1.25)
    with torch.no_grad():
        expected = model(_images())["map"]
    path = model.save_head(tmp_path / "head.safetensors")
    config = json.loads(path.with_suffix(".json").read_text())
    assert config["taps"] == [1, 2, 3, 4] and config["weights_sha256"] == model.config.weights_sha256
    fresh = build_model(tiny_vit(), image_size=64).load_head(path)
    assert fresh.threshold == 1.25
    with torch.no_grad():
        torch.testing.assert_close(fresh(_images())["map"], expected, atol=0, rtol=0)


def test_head_for_other_taps_or_width_is_refused(model, tmp_path):
    path = build_model(tiny_vit(), image_size=64, taps=(2, 4)).save_head(tmp_path / "taps.safetensors")
    with pytest.raises(HeadCheckpointError, match="taps"):
        model.load_head(path)
    wide = build_model(tiny_vit(embed_dim=96, num_heads=2), image_size=64).save_head(tmp_path / "wide.safetensors")
    with pytest.raises(HeadCheckpointError, match="embed_dim"):
        model.load_head(wide)


def test_head_on_other_backbone_weights_warns(model, tmp_path, caplog):
    other = build_model(tiny_vit(), image_size=64)
    with torch.no_grad():
        other.backbone.vit.blocks[0].attn.qkv.weight.add_(1.0)
    path = model.save_head(tmp_path / "head.safetensors")
    other.config = dataclasses.replace(other.config, weights_sha256=weights_sha256(backbone_state(other.backbone.vit)))
    other.load_head(path)
    assert "trained on backbone weights" in caplog.text


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("kind", ["pickled-code", "corrupt", "foreign-safetensors", "missing"])
def test_bad_checkpoints_are_refused_without_running_code(model, tmp_path, kind, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "head.pt"
    if kind == "pickled-code":
        torch.save({"anomaly_token": _Payload()}, path)
    elif kind == "corrupt":
        path.write_bytes(b"\x00garbage" * 100)
    elif kind == "foreign-safetensors":
        path = tmp_path / "head.safetensors"
        save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(HeadCheckpointError, match=str(path.name)):
        model.load_head(path)
    assert not (tmp_path / "pwned").exists()


def test_weight_files_load_and_hash_by_content(tmp_path):
    source = tiny_vit()
    state = backbone_state(source)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    hashes = set()
    for name in ("w.safetensors", "w.pth"):
        torch.manual_seed(5)
        target = tiny_vit()
        torch.nn.init.normal_(target.pos_embed)
        model = build_model(target, backbone_weights=tmp_path / name, image_size=64)
        torch.testing.assert_close(model.backbone.vit.pos_embed, source.pos_embed)
        hashes.add(model.config.weights_sha256)
    assert hashes == {weights_sha256(state)}


def test_weight_file_missing_tensors_is_refused(tmp_path):
    state = backbone_state(tiny_vit())
    del state["blocks.0.attn.qkv.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(BackboneWeightsError, match="blocks.0.attn.qkv.weight"):
        build_model(tiny_vit(), backbone_weights=tmp_path / "partial.pth")


def test_offline_without_weights_names_the_option(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(BackboneWeightsError, match="--backbone-weights"):
        build_model("vit_tiny_patch16_224.augreg_in21k")


def test_unknown_backbone_name_lists_presets():
    with pytest.raises(ValueError, match="dinov2-s14"):
        build_model("not_a_model")


def test_random_weights_on_a_timm_name_build_without_network():
    model = build_model("vit_tiny_patch16_224", backbone_weights="random", image_size=32, taps=(6, 12))
    assert model(_images(1, 32))["map"].shape == (1, 32, 32)
