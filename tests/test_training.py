"""The auxiliary training stage on tiny data sets and tiny random backbones."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from builders import make_mvtec, write_defect
from conftest import tiny_vit
from visualad_med import build_model
from visualad_med.training.calibration import f1_max_threshold
from visualad_med.apps.cli import main
from visualad_med.datasets import MVTecDataset
from visualad_med.training import loop as training
from visualad_med.training.loop import TrainConfig, cosine_factor, make_optimizer, train, train_step

TINY_CLI = ["--backbone", "vit_tiny_patch16_224", "--backbone-weights", "random", "--image-size", "32",
            "--taps", "6,12", "--batch-size", "4"]


def _dataset(root: Path, model) -> MVTecDataset:
    make_mvtec(root)
    for index in range(2, 6):
        write_defect(root / f"widget/test/scratch/{index:03d}.png", root / f"widget/ground_truth/scratch/{index:03d}_mask.png")
    return MVTecDataset(root, image_size=model.image_size, mean=model.config.mean, std=model.config.std)


def test_cosine_schedule_runs_from_one_to_the_final_fraction():
    assert cosine_factor(0, 5, 0.1) == pytest.approx(1.0)
    assert cosine_factor(4, 5, 0.1) == pytest.approx(0.1)
    assert cosine_factor(0, 1, 0.1) == 1.0


def test_optimizer_has_reference_groups_and_rates():
    model = build_model(tiny_vit(), image_size=64)
    optimizer = make_optimizer(model, TrainConfig())
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates == {"tokens": 1e-3, "head": 1e-4}
    assert optimizer.param_groups[0]["params"][0] is model.backbone.anomaly_token


def test_a_few_steps_lower_the_loss(tmp_path):
    model = build_model(tiny_vit(), image_size=64).train()
    batch = torch.utils.data.default_collate([_dataset(tmp_path, model)[i] for i in range(8)])
    optimizer = make_optimizer(model, TrainConfig(lr_tokens=1e-2, lr_head=1e-2))
    torch.manual_seed(0)
    config = TrainConfig()
    losses = [train_step(model, batch["image"], batch["mask"], batch["label"], optimizer, config, torch.device("cpu"))["total"]
              for _ in range(15)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses


def test_resumed_run_equals_uninterrupted_run_bitwise(tmp_path):
    config = TrainConfig(epochs=2, batch_size=4, calibration_images=4)
    cpu = torch.device("cpu")
    straight = build_model(tiny_vit(), image_size=64)
    train(straight, _dataset(tmp_path / "data1", straight), tmp_path / "straight", config, cpu)
    interrupted = build_model(tiny_vit(), image_size=64)
    data = _dataset(tmp_path / "data2", interrupted)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "_save_state", _save_then_stop)
        with pytest.raises(_Stopped):
            train(interrupted, data, tmp_path / "resumed", config, cpu)
    assert not (tmp_path / "resumed/head.safetensors").exists()
    resumed = build_model(tiny_vit(), image_size=64)
    train(resumed, data, tmp_path / "resumed", config, cpu, resume=True)
    first = build_model(tiny_vit(), image_size=64).load_head(tmp_path / "straight/head.safetensors")
    second = build_model(tiny_vit(), image_size=64).load_head(tmp_path / "resumed/head.safetensors")
    for (key, a), b in zip(first.head_state_dict().items(), second.head_state_dict().values()):
        assert torch.equal(a, b), key
    assert first.threshold == second.threshold


class _Stopped(Exception):
    """Raised after the first epoch's checkpoint, as when a run is killed."""


def _save_then_stop(out_dir, model, optimizer, epoch, save=training._save_state):
    save(out_dir, model, optimizer, epoch)
    raise _Stopped


def test_final_head_round_trips_with_a_calibrated_threshold(tmp_path):
    model = build_model(tiny_vit(), image_size=64)
    path = train(model, _dataset(tmp_path / "data", model), tmp_path / "run", TrainConfig(epochs=1, batch_size=4),
                 torch.device("cpu"), provenance={"data": "tiny"})
    loaded = build_model(tiny_vit(), image_size=64).load_head(path)
    assert loaded.config.threshold == model.settings.threshold and loaded.config.threshold is not None
    assert loaded.config.training["data"] == "tiny" and loaded.config.training["epochs"] == 1
    assert (tmp_path / "run/checkpoints/epoch_001.safetensors").is_file()


def test_f1_max_threshold_picks_the_separating_edge():
    edges = np.linspace(0, 4, 5)
    threshold, f1 = f1_max_threshold(np.array([0, 0, 3, 5]), np.array([9, 4, 0, 0]), edges)
    assert (threshold, f1) == (2.0, 1.0)


def test_cli_trains_with_synthetic_anomalies_and_skips_a_corrupt_image(tmp_path, caplog):
    root = make_mvtec(tmp_path / "data")
    (root / "widget/test/good/broken.png").write_bytes(b"not a png")
    caplog.set_level(logging.INFO)
    code = main(["train", "--data", str(root), "--layout", "mvtec", "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--synthetic", "all", "--synthetic-probability", "0.5", "--map-reference", "body", *TINY_CLI])
    assert code == 0
    head = json.loads((tmp_path / "run/head.json").read_text())
    assert head["map_reference"] == "body" and head["threshold"] is not None
    assert "broken.png" in caplog.text and re.search(r"[1-9]\d* unreadable skipped", caplog.text)


@pytest.mark.parametrize("case, message", [
    ("empty", "expected layout"),
    ("layout", "valid: mvtec, visa, meta, mvfa"),
    ("no-mask", "no mask for anomalous image"),
])
def test_cli_bad_training_data_gives_a_clear_error(tmp_path, caplog, case, message):
    root = tmp_path / "data"
    root.mkdir()
    layout = "mvtec"
    if case == "layout":
        make_mvtec(root)
        layout = "mvtech"
    elif case == "no-mask":
        make_mvtec(root)
        write_defect(root / "widget/test/scratch/009.png", None)
    code = main(["train", "--data", str(root), "--layout", layout, "--out", str(tmp_path / "run"), *TINY_CLI])
    assert code == 2
    assert message in caplog.text
    assert not (tmp_path / "run/head.safetensors").exists()


def test_torchrun_trains_with_two_processes(tmp_path):
    root = make_mvtec(tmp_path / "data")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "visualad_med",
               "train", "--data", str(root), "--layout", "mvtec", "--out", str(tmp_path / "run"), "--epochs", "1",
               "--batch-size", "2", *TINY_CLI[:-2]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "epoch 1/1" in result.stderr and (tmp_path / "run/head.safetensors").is_file()
    head = build_model("vit_tiny_patch16_224", backbone_weights="random", image_size=32, taps=(6, 12))
    assert head.load_head(tmp_path / "run/head.safetensors").config.training["processes"] == 2


def test_cli_calibrate_rewrites_scoring_and_threshold(tmp_path):
    root = make_mvtec(tmp_path / "data")
    assert main(["train", "--data", str(root), "--layout", "mvtec", "--out", str(tmp_path / "run"), "--epochs", "1",
                 *TINY_CLI]) == 0
    head = tmp_path / "run/head.safetensors"
    out = tmp_path / "combined.safetensors"
    assert main(["calibrate", "--data", str(root), "--layout", "mvtec", "--head", str(head), "--out", str(out),
                 "--scoring", "combined", "--selfsim-weight", "2", "--map-reference", "body",
                 "--backbone-weights", "random"]) == 0
    before = build_model("vit_tiny_patch16_224", backbone_weights="random", image_size=32, taps=(6, 12)).load_head(head)
    after = build_model("vit_tiny_patch16_224", backbone_weights="random", image_size=32, taps=(6, 12)).load_head(out)
    assert (after.config.scoring, after.config.selfsim_weight, after.config.map_reference) == ("combined", 2.0, "body")
    assert after.threshold != before.threshold
    assert after.config.training["calibration"]["scoring"] == "combined"
    assert after.config.training["calibration"]["map_reference"] == "body"


def test_cli_trains_on_several_roots_with_classes_balanced(tmp_path):
    first = make_mvtec(tmp_path / "first")
    second = make_mvtec(make_mvtec(tmp_path / "second"), class_name="gadget")  # "widget" again, and "gadget"
    for index in range(2, 12):  # gadget is 6x the size of each widget class
        write_defect(second / f"gadget/test/scratch/{index:03d}.png",
                     second / f"gadget/ground_truth/scratch/{index:03d}_mask.png")
    code = main(["train", "--data", str(first), "--data", str(second), "--layout", "mvtec", "--out",
                 str(tmp_path / "run"), "--epochs", "1", *TINY_CLI])
    assert code == 0
    training_record = json.loads((tmp_path / "run/head.json").read_text())["training"]
    assert training_record["data"] == [str(first), str(second)]
    assert training_record["classes"] == ["first/widget", "gadget", "second/widget"]
    assert training_record["balance_classes"] is True


def test_class_balanced_weights_draw_every_class_equally_often(tmp_path):
    from visualad_med.datasets import build_dataset, class_balanced_weights

    first, second = make_mvtec(tmp_path / "first"), make_mvtec(tmp_path / "second", class_name="gadget")
    for index in range(2, 20):
        write_defect(second / f"gadget/test/scratch/{index:03d}.png",
                     second / f"gadget/ground_truth/scratch/{index:03d}_mask.png")
    dataset = build_dataset("mvtec", [first, second], 32, (0.5,) * 3, (0.5,) * 3)
    classes = [record.class_name for record in dataset.records]
    assert classes.count("gadget") == 22 and classes.count("widget") == 4
    draws = torch.multinomial(class_balanced_weights(dataset), 20000, replacement=True,
                              generator=torch.Generator().manual_seed(0))
    share = np.mean([classes[i] == "gadget" for i in draws.tolist()])
    assert abs(share - 0.5) < 0.02


def test_cli_trains_the_dinov2_preset_at_448_with_lesion_like_anomalies(tmp_path):
    """448 px: the S/14 patch grid is 32 x 32; the head records it and maps come back at 448 x 448."""
    root = make_mvtec(tmp_path / "data")
    code = main(["train", "--data", str(root), "--layout", "mvtec", "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--max-steps", "1", "--batch-size", "2", "--calibration-images", "2", "--backbone", "dinov2-s14",
                 "--backbone-weights", "random", "--image-size", "448", "--synthetic", "lesion",
                 "--synthetic-probability", "1.0"])
    assert code == 0
    assert json.loads((tmp_path / "run/head.json").read_text())["image_size"] == 448
    model = build_model("dinov2-s14", backbone_weights="random", image_size=448).load_head(tmp_path / "run/head.safetensors")
    assert model.backbone.grid_for(448, 448) == (32, 32)
    with torch.inference_mode():
        out = model.eval()(torch.zeros(1, 3, 448, 448))
    assert out["map"].shape == (1, 448, 448) and torch.isfinite(out["map"]).all()
