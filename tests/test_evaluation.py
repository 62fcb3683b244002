"""Evaluation run and report: tiny data sets in temporary folders, a tiny random model."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_curve

from builders import make_mvfa, write_defect, write_normal
from conftest import tiny_vit
from visualad_med.apps.cli import main
from visualad_med.datasets import MVFADataset, write_meta_json
from visualad_med.evaluation.images import evaluate
from visualad_med.evaluation.metrics import curve_points, image_metrics
from visualad_med.evaluation.pixel_metrics import PixelMetricAccumulator
from visualad_med.model.visualad import build_model
from visualad_med.evaluation.report import markdown_table, percent_cell
from visualad_med.io.hashing import file_sha256

NO_MASKS = "n/a (no masks)"


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_vit(), image_size=64)


def _table_rows(out: Path) -> dict[str, list[str]]:
    """Class -> cells of ``results.md``'s table (without the class cell)."""
    rows = {}
    for line in (out / "results.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "Class":
            rows[cells[0]] = cells[1:]
    return rows


def _json(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_mvfa_with_and_without_masks_writes_files_table_and_exact_metrics(model, tmp_path):
    make_mvfa(tmp_path / "data", "Brain")
    make_mvfa(tmp_path / "data", "Liver", masks=False)
    out = tmp_path / "out"
    results = evaluate(model, tmp_path / "data", "mvfa", out, batch_size=3, overlays=4, device="cpu")

    for name in ("results.json", "results.md", "scores.csv", "curves/Brain_image.png", "curves/Brain_pixel.png",
                 "curves/Liver_image.png"):
        assert (out / name).is_file(), name
    assert not (out / "curves/Liver_pixel.png").exists()
    overlays = sorted(p.name for p in (out / "overlays/Brain").iterdir())
    assert overlays == ["anomalous_a0.png", "anomalous_a1.png", "normal_n0.png", "normal_n2.png"]
    assert Image.open(out / "overlays/Brain/anomalous_a0.png").size == (64, 64)

    saved = _json(out)
    assert saved["resolution"] == 64 and "S x S" in saved["protocol"]
    assert saved["model"]["head_sha256"] == "untrained" and saved["model"]["config"]["image_size"] == 64
    liver = saved["classes"]["Liver"]
    assert liver["metrics"]["pixel_auroc"] is None and liver["undefined"]["pixel"] == "no masks"
    assert liver["counts"] == {"listed": 5, "evaluated": 5, "normal": 3, "anomalous": 2, "unreadable": 0,
                               "mask_problems": 0, "pixel_images": 0}
    assert saved["mean"]["counts"]["evaluated"] == 10 and saved["classes"]["Brain"]["counts"]["pixel_images"] == 5
    assert set(saved["timings"]) >= {"dataset_s", "inference_s", "metrics_s", "total_s", "images_per_s"}
    assert "results.json" in saved["files"] and "curves/Brain_pixel.png" in saved["files"]

    # Metrics equal a direct computation over the same maps at 64 x 64.
    dataset = MVFADataset(tmp_path / "data", 64, model.config.mean, model.config.std, classes=["Brain"], resize="pad")
    items = [dataset[i] for i in range(len(dataset))]
    with torch.inference_mode():
        outputs = model(torch.stack([item["image"] for item in items]))
    labels = np.array([item["label"] for item in items])
    expected = image_metrics(outputs["score"].numpy(), labels)
    accumulator = PixelMetricAccumulator()
    for item, anomaly_map in zip(items, outputs["map"].numpy()):
        top, left, height, width = item["valid"].tolist()
        shown = (slice(None), slice(top, top + height), slice(left, left + width))
        accumulator.update(anomaly_map[None][shown], item["mask"].numpy()[None][shown])
    expected.update(accumulator.compute())
    for key, value in expected.items():
        assert results["classes"]["Brain"]["metrics"][key] == pytest.approx(value, abs=1e-3), key  # batch-size noise

    rows = _table_rows(out)
    assert list(rows) == ["Brain", "Liver", "Mean"]
    assert rows["Liver"][:2] == ["3", "2"] and rows["Liver"][5:] == [NO_MASKS] * 4
    assert all(re.fullmatch(r"\d{1,3}\.\d", cell) for cell in rows["Brain"][2:])
    mean_auroc = (results["classes"]["Brain"]["metrics"]["image_auroc"]
                  + results["classes"]["Liver"]["metrics"]["image_auroc"]) / 2
    assert rows["Mean"][2] == f"{100 * mean_auroc:.1f}"
    assert rows["Mean"][5] == rows["Brain"][5]  # pixel mean over the one class with masks

    with open(out / "scores.csv", newline="") as handle:
        scores = list(csv.DictReader(handle))
    assert len(scores) == 10 and {row["class"] for row in scores} == {"Brain", "Liver"}


def test_meta_json_layout_matches_the_mvfa_folder(model, tmp_path):
    make_mvfa(tmp_path / "data", "Brain")
    write_meta_json(tmp_path / "data", "mvfa")
    from_meta = evaluate(model, tmp_path / "data", "meta", tmp_path / "meta", overlays=0, device="cpu")
    from_folder = evaluate(model, tmp_path / "data", "mvfa", tmp_path / "mvfa", overlays=0, device="cpu")
    assert from_meta["classes"]["Brain"]["metrics"] == pytest.approx(from_folder["classes"]["Brain"]["metrics"])
    assert from_meta["data"]["layout"] == "meta" and (tmp_path / "meta/results.md").is_file()


def test_a_data_set_object_is_evaluated_as_given(model, tmp_path):
    make_mvfa(tmp_path / "data", "Brain")
    dataset = MVFADataset(tmp_path / "data", 64, model.config.mean, model.config.std)
    results = evaluate(model, dataset, None, tmp_path / "out", overlays=0, device="cpu")
    assert results["data"]["root"] is None and results["data"]["name"] == dataset.name
    assert f"- Data: {dataset.name}: 5 images evaluated" in (tmp_path / "out/results.md").read_text()


def test_set_without_masks_says_so_in_every_pixel_cell_including_mean(model, tmp_path):
    make_mvfa(tmp_path / "data", "Chest", masks=False)
    evaluate(model, tmp_path / "data", "mvfa", tmp_path / "out", overlays=0, device="cpu")
    rows = _table_rows(tmp_path / "out")
    assert rows["Chest"][5:] == [NO_MASKS] * 4 and rows["Mean"][5:] == [NO_MASKS] * 4
    assert _json(tmp_path / "out")["mean"]["metrics"]["pixel_aupro"] is None


def test_layout_folder_without_images_is_an_error_naming_it(model, tmp_path):
    empty = tmp_path / "data" / "Brain_AD" / "test" / "good" / "img"
    empty.mkdir(parents=True)
    with pytest.raises(ValueError, match=re.escape(str(empty.parents[1]))):
        evaluate(model, tmp_path / "data", "mvfa", tmp_path / "out", device="cpu")
    with pytest.raises(ValueError, match="no <Name>_AD set folder"):
        evaluate(model, empty, "mvfa", tmp_path / "out", device="cpu")


def test_missing_and_mismatched_masks_leave_pixel_metrics_only(model, tmp_path, caplog):
    folder = make_mvfa(tmp_path / "data", "Brain") / "Brain_AD" / "test" / "Ungood"
    (folder / "anomaly_mask/a1.png").unlink()
    write_defect(folder / "img/a2.png", folder / "anomaly_mask/a2.png")
    write_normal(folder / "anomaly_mask/a2.png", size=(20, 20))  # mask of another size than its image
    with caplog.at_level(logging.WARNING):
        results = evaluate(model, tmp_path / "data", "mvfa", tmp_path / "out", overlays=0, device="cpu")
    brain = results["classes"]["Brain"]
    assert brain["counts"]["anomalous"] == 3 and brain["counts"]["mask_problems"] == 2
    assert brain["counts"]["pixel_images"] == 4  # 3 normal + a0
    assert {p["image"] for p in brain["mask_problems"]} == {str(folder / "img/a1.png"), str(folder / "img/a2.png")}
    assert not math.isnan(brain["metrics"]["pixel_auroc"])
    assert "2 anomalous image(s) left out of pixel metrics" in caplog.text and str(folder / "img/a1.png") in caplog.text
    assert _json(tmp_path / "out")["mean"]["counts"]["mask_problems"] == 2


def test_unreadable_image_is_skipped_and_counted(model, tmp_path):
    make_mvfa(tmp_path / "data", "Brain")
    broken = tmp_path / "data/Brain_AD/test/good/img/broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    results = evaluate(model, tmp_path / "data", "mvfa", tmp_path / "out", batch_size=2, device="cpu")
    brain = results["classes"]["Brain"]
    assert brain["counts"]["listed"] == 6 and brain["counts"]["evaluated"] == 5 and brain["counts"]["unreadable"] == 1
    assert brain["unreadable"] == [str(broken)]
    assert "1 unreadable and skipped" in (tmp_path / "out/results.md").read_text()


def test_every_image_unreadable_is_an_error(model, tmp_path):
    folder = tmp_path / "data/Brain_AD/test/good/img"
    folder.mkdir(parents=True)
    (folder / "x.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no readable image"):
        evaluate(model, tmp_path / "data", "mvfa", tmp_path / "out", device="cpu")


def test_classes_with_one_kind_of_image_say_why_auroc_is_undefined(model, tmp_path):
    make_mvfa(tmp_path / "data", "Brain")
    for i in range(2):
        write_normal(tmp_path / f"data/Healthy_AD/test/good/img/n{i}.png")
        write_defect(tmp_path / f"data/Polyp_AD/test/Ungood/img/a{i}.png",
                     tmp_path / f"data/Polyp_AD/test/Ungood/anomaly_mask/a{i}.png")
    results = evaluate(model, tmp_path / "data", "mvfa", tmp_path / "out", device="cpu")
    rows = _table_rows(tmp_path / "out")
    assert rows["Healthy"][2:5] == ["n/a (only normal images)"] * 3 and rows["Healthy"][5:] == [NO_MASKS] * 4
    assert rows["Polyp"][2:5] == ["n/a (only anomalous images)"] * 3
    assert all(re.fullmatch(r"\d{1,3}\.\d", cell) for cell in rows["Polyp"][5:])  # pixel metrics still defined
    assert results["mean"]["metrics"]["image_auroc"] == results["classes"]["Brain"]["metrics"]["image_auroc"]
    assert not (tmp_path / "out/curves/Polyp_image.png").exists() and (tmp_path / "out/curves/Polyp_pixel.png").exists()


def test_only_anomalous_set_mean_row_keeps_the_reason(model, tmp_path):
    for name in ("Kvasir", "ISIC"):
        write_defect(tmp_path / f"data/{name}_AD/test/Ungood/img/a0.png",
                     tmp_path / f"data/{name}_AD/test/Ungood/anomaly_mask/a0.png")
    results = evaluate(model, tmp_path / "data", "mvfa", tmp_path / "out", device="cpu")
    assert results["mean"]["undefined"] == {"image": "only anomalous images", "pixel": None}
    assert "| Mean | 0 | 2 | n/a (only anomalous images) |" in markdown_table(results)


def test_bad_arguments_are_value_errors(model, tmp_path):
    make_mvfa(tmp_path / "data", "Brain")
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, tmp_path / "data", "mvfa", tmp_path / "out", batch_size=0)
    other = MVFADataset(tmp_path / "data", 32, model.config.mean, model.config.std)
    with pytest.raises(ValueError, match="32 px"):
        evaluate(model, other, None, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown data set layout 'folders'"):
        evaluate(model, tmp_path / "data", "folders", tmp_path / "out")


@pytest.mark.parametrize("with_head", [False, True], ids=["untrained", "saved-head"])
def test_cli_evaluate(tmp_path, with_head):
    make_mvfa(tmp_path / "data", "Brain")
    args = ["evaluate", "--data", str(tmp_path / "data"), "--layout", "mvfa", "--out", str(tmp_path / "out"),
            "--backbone", "vit_tiny_patch16_224", "--backbone-weights", "random", "--device", "cpu",
            "--batch-size", "4", "--overlays", "2"]
    if with_head:
        head = build_model("vit_tiny_patch16_224", backbone_weights="random", image_size=64).save_head(
            tmp_path / "head.safetensors"
        )
        args += ["--head", str(head)]
    else:
        args += ["--head", "untrained", "--image-size", "64"]
    assert main(args) == 0
    saved = _json(tmp_path / "out")
    assert saved["command"][:2] == ["visualad-med", "evaluate"] and "--layout" in saved["command"]
    assert saved["model"]["head_sha256"] == (file_sha256(head) if with_head else "untrained")
    assert saved["timings"]["model_load_s"] > 0
    assert len(list((tmp_path / "out/overlays/Brain").iterdir())) == 2


def test_cli_evaluate_reports_an_empty_folder(tmp_path, caplog):
    (tmp_path / "data/Brain_AD/test/good/img").mkdir(parents=True)
    args = ["evaluate", "--data", str(tmp_path / "data"), "--layout", "mvfa", "--out", str(tmp_path / "out"),
            "--backbone", "vit_tiny_patch16_224", "--backbone-weights", "random", "--head", "untrained",
            "--image-size", "64", "--device", "cpu"]
    assert main(args) == 2
    assert str(tmp_path / "data/Brain_AD/test") in caplog.text


def test_curve_points_are_exact_points_of_the_sklearn_curves():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=60).round(1)
    labels = rng.random(60) < 0.3
    points = curve_points(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(points.fpr, fpr[1:])
    np.testing.assert_allclose(points.tpr, tpr[1:])
    precision, recall, _ = precision_recall_curve(labels, scores)
    np.testing.assert_allclose(points.precision[::-1], precision[:-1])
    np.testing.assert_allclose(points.tpr[::-1], recall[:-1])

    accumulator = PixelMetricAccumulator()
    accumulator.update(scores.reshape(2, 5, 6).astype(np.float32), labels.reshape(2, 5, 6))
    pixel = accumulator.curve_points()
    np.testing.assert_allclose(pixel.fpr, points.fpr)
    np.testing.assert_allclose(pixel.precision, points.precision)
    assert len(accumulator.curve_points(max_points=4).fpr) <= 4
    assert curve_points(scores, np.zeros(60, dtype=bool)) is None


def test_percent_cells():
    assert percent_cell(0.8734, None) == "87.3"
    assert percent_cell(1.0, None) == "100.0"
    assert percent_cell(math.nan, "no masks") == NO_MASKS


def test_pad_resize_letterboxes_like_volume_slices_and_scores_only_the_image(tmp_path):
    from visualad_med.datasets import build_dataset, read_rgb
    from visualad_med.transforms import ResizeLongestPad

    root = make_mvfa(tmp_path / "mvfa", "Brain")  # 40 wide, 32 high
    padded = build_dataset("mvfa", root, 32, (0.5,) * 3, (0.5,) * 3, resize="pad")
    sample = padded[3]
    top, left, height, width = sample["valid"].tolist()
    assert (height, width) == (26, 32) and top == 3 and left == 0
    assert sample["mask"][:top].sum() == 0 and sample["mask"].sum() > 0
    rgb = torch.from_numpy(read_rgb(padded.records[3].path).astype(np.float32) / 255).permute(2, 0, 1)[None]
    expected = (torch.as_tensor(ResizeLongestPad(32)(rgb))[0] - 0.5) / 0.5
    torch.testing.assert_close(sample["image"], expected)
    torch.manual_seed(0)
    assert main(["evaluate", "--data", str(root), "--layout", "mvfa", "--out", str(tmp_path / "out"), "--resize",
                 "pad", "--head", "untrained", "--backbone", "vit_tiny_patch16_224", "--backbone-weights", "random",
                 "--image-size", "32", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["resize"] == "pad"
