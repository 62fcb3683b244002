"""Tests for visualad_med.evaluation.metrics and pixel_metrics against scikit-learn and a slow AUPRO reference."""

import logging
import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from visualad_med.evaluation.metrics import auroc, average_precision, f1_max, image_metrics, mean_row
from visualad_med.evaluation.pixel_metrics import PixelMetricAccumulator, _BlockBuffer, aupro

TOL = 1e-9
"""Ours and scikit-learn's differ only by float rounding (ours: exact integer ranks; sklearn: float cumsums)."""


def sklearn_metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """AUROC, AP and F1-max as scikit-learn computes them."""
    scores, labels = scores.ravel(), labels.ravel()
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return roc_auc_score(labels, scores), average_precision_score(labels, scores), float(np.nanmax(f1))


def reference_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3, structure=None) -> float:
    """Slow, direct AUPRO: every distinct score as a threshold, trapezoid to ``limit``."""
    structure = np.ones((3, 3)) if structure is None else structure
    regions = []
    for mask in masks:
        labelled, n = ndimage.label(mask, structure=structure)
        regions.append([labelled == k for k in range(1, n + 1)])
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        fprs.append((predicted & normal).sum() / normal.sum())
        overlaps = [(p[r]).sum() / r.sum() for p, rs in zip(predicted, regions) for r in rs]
        pros.append(float(np.mean(overlaps)))
    fprs.append(1.0)
    pros.append(1.0)
    area = 0.0
    for x0, y0, x1, y1 in zip(fprs[:-1], pros[:-1], fprs[1:], pros[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
            break
    return area / limit


def blob_masks(rng: np.random.Generator, shape: tuple[int, int, int], max_blobs: int = 3) -> np.ndarray:
    """(B, H, W) masks with a few random discs per image, some images empty."""
    b, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros(shape, dtype=bool)
    for i in range(b):
        for _ in range(rng.integers(0, max_blobs + 1)):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, max(2, h // 5))
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return masks


def anomaly_maps(rng: np.random.Generator, masks: np.ndarray, levels: int | None = None) -> np.ndarray:
    """float32 maps, higher inside masks, optionally quantised to ``levels`` values."""
    maps = rng.random(masks.shape) + 0.6 * masks * rng.random(masks.shape)
    if levels is not None:
        maps = np.round(maps * (levels - 1) / 1.6) / (levels - 1)
    return maps.astype(np.float32)


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, batch: int | None = None) -> dict[str, float]:
    accumulator = PixelMetricAccumulator()
    step = batch or len(maps)
    for i in range(0, len(maps), step):
        accumulator.update(maps[i : i + step], masks[i : i + step])
    return accumulator.compute()


# Image level.


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [None, 2, 5])
def test_image_metrics_match_sklearn(seed, levels):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels = rng.random(n) < rng.uniform(0.05, 0.95)
    labels[:2] = [True, False]
    scores = rng.normal(size=n) + labels * rng.uniform(0, 2)
    if levels is not None:
        scores = np.round(scores * levels / 4)
    result = image_metrics(scores, labels)
    expected = sklearn_metrics(scores, labels)
    assert result["image_auroc"] == pytest.approx(expected[0], abs=TOL)
    assert result["image_ap"] == pytest.approx(expected[1], abs=TOL)
    assert result["image_f1_max"] == pytest.approx(expected[2], abs=TOL)
    assert auroc(scores, labels) == result["image_auroc"]
    assert average_precision(scores, labels) == result["image_ap"]
    assert f1_max(scores, labels) == result["image_f1_max"]


def test_image_metrics_all_ties():
    labels = np.array([0, 1, 0, 0, 1, 0])
    scores = np.full(6, 0.5)
    result = image_metrics(scores, labels)
    assert result["image_auroc"] == pytest.approx(0.5)
    assert result["image_ap"] == pytest.approx(sklearn_metrics(scores, labels)[1], abs=TOL)
    assert result["image_f1_max"] == pytest.approx(sklearn_metrics(scores, labels)[2], abs=TOL)


def test_image_metrics_single_positive_and_negative_zero():
    scores = np.array([0.0, -0.0, 0.3, 0.0, 0.1])
    labels = np.array([False, True, False, False, False])
    result = image_metrics(scores, labels)
    expected = sklearn_metrics(scores, labels)
    assert tuple(result.values()) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("share", [0.01, 0.3])
def test_metrics_match_sklearn_on_float16_ties(share):
    # Scores rounded through float16, as saved maps are: about 17,000 distinct values over 200,000 scores,
    # so most scores tie, across classes too.
    rng = np.random.default_rng(11)
    labels = rng.random(200_000) < share
    scores = (rng.standard_normal(labels.size) + 1.5 * labels).astype(np.float16).astype(np.float32)
    expected = sklearn_metrics(scores, labels)
    assert tuple(image_metrics(scores, labels).values()) == pytest.approx(expected, rel=0, abs=TOL)
    assert (auroc(scores, labels), average_precision(scores, labels), f1_max(scores, labels)) == pytest.approx(
        expected, rel=0, abs=TOL)
    pixels = pixel_metrics(scores.reshape(200, 20, 50), labels.reshape(200, 20, 50))
    assert (pixels["pixel_auroc"], pixels["pixel_ap"], pixels["pixel_f1_max"]) == pytest.approx(
        expected, rel=0, abs=TOL)


@pytest.mark.parametrize("label", [0, 1])
def test_image_metrics_one_class_missing_is_nan(label, caplog):
    with caplog.at_level(logging.WARNING, logger="visualad_med.evaluation.metrics"):
        result = image_metrics(np.array([0.1, 0.2, 0.3]), np.full(3, label))
    assert all(math.isnan(v) for v in result.values())
    assert "both classes are needed" in caplog.text


def test_image_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        image_metrics(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="non-finite"):
        image_metrics(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"only 0 and 1.*\[0, 2\]"):
        image_metrics(np.zeros(2), np.array([0, 2]))


# Pixel level.


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("levels", [None, 7, 40])
def test_pixel_metrics_match_sklearn_and_reference(seed, levels):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, (4, 20, 24))
    masks[0, 0, 0] = True  # at least one region
    maps = anomaly_maps(rng, masks, levels)
    result = pixel_metrics(maps, masks)
    expected = sklearn_metrics(maps, masks)
    assert result["pixel_auroc"] == pytest.approx(expected[0], abs=TOL)
    assert result["pixel_ap"] == pytest.approx(expected[1], abs=TOL)
    assert result["pixel_f1_max"] == pytest.approx(expected[2], abs=TOL)
    assert result["pixel_aupro"] == pytest.approx(reference_aupro(maps, masks), abs=TOL)


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_integration_limits_match_reference(limit):
    rng = np.random.default_rng(7)
    masks = blob_masks(rng, (3, 16, 16), max_blobs=4)
    masks[1, 5, 5] = True
    maps = anomaly_maps(rng, masks, levels=25)
    assert aupro(maps, masks, limit) == pytest.approx(reference_aupro(maps, masks, limit), abs=TOL)


def test_aupro_limit_hit_exactly():
    # 10 normal pixels with distinct scores: FPR takes the value 3 / 10 == 0.3 exactly.
    maps = np.arange(12, dtype=np.float32).reshape(1, 3, 4) / 12
    masks = np.zeros((1, 3, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 2, 2] = True
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks), abs=TOL)


def test_aupro_uses_eight_connectivity():
    # One region when diagonal neighbours connect, two with 4-connectivity.
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 0, 0] = True
    masks[0, 1, 1:4] = True
    maps = np.zeros((1, 6, 6), dtype=np.float32)
    maps[0, 0, 0] = 1.0
    maps[0, 4, 4] = 0.5
    eight = reference_aupro(maps, masks)
    four = reference_aupro(maps, masks, structure=ndimage.generate_binary_structure(2, 1))
    assert eight != pytest.approx(four)
    assert aupro(maps, masks) == pytest.approx(eight, abs=TOL)


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(3)
    masks = blob_masks(rng, (9, 30, 20))
    masks[4, 10, 10] = True
    maps = anomaly_maps(rng, masks, levels=50)
    one_shot = pixel_metrics(maps, masks)
    assert pixel_metrics(maps, masks, batch=1) == one_shot
    assert pixel_metrics(maps, masks, batch=4) == one_shot


def test_small_blocks_give_same_result(monkeypatch):
    rng = np.random.default_rng(8)
    masks = blob_masks(rng, (5, 12, 14))
    masks[2, 6, 6] = True
    maps = anomaly_maps(rng, masks, levels=30)
    expected = pixel_metrics(maps, masks)
    monkeypatch.setattr(_BlockBuffer, "_BLOCK_BYTES", 56)
    accumulator = PixelMetricAccumulator()
    accumulator.update(maps[:3], masks[:3])
    accumulator.compute()
    accumulator.update(maps[3:], masks[3:])
    assert accumulator.compute() == expected


def test_block_buffer_keeps_every_value_in_order():
    buffer = _BlockBuffer(np.uint32)
    buffer._block_len = 7
    parts = [np.arange(start, start + n, dtype=np.uint32) for start, n in [(0, 3), (3, 0), (3, 11), (14, 7), (21, 1)]]
    for part in parts[:3]:
        buffer.append(part)
    np.testing.assert_array_equal(buffer.merged(), np.concatenate(parts[:3]))
    for part in parts[3:]:
        buffer.append(part)
    np.testing.assert_array_equal(buffer.merged(), np.concatenate(parts))
    assert buffer.size == 22


def test_compute_twice_and_update_after_compute():
    rng = np.random.default_rng(4)
    masks = blob_masks(rng, (4, 16, 16))
    masks[0, 3, 3] = True
    maps = anomaly_maps(rng, masks)
    accumulator = PixelMetricAccumulator()
    accumulator.update(maps[:2], masks[:2])
    first = accumulator.compute()
    assert accumulator.compute() == first
    accumulator.update(maps[2:], masks[2:])
    assert accumulator.num_pixels == maps.size
    assert accumulator.compute() == pixel_metrics(maps, masks)


def test_pixel_all_ties():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2:4, 2:5] = True
    maps = np.full(masks.shape, 0.25, dtype=np.float32)
    result = pixel_metrics(maps, masks)
    expected = sklearn_metrics(maps, masks)
    assert result["pixel_auroc"] == pytest.approx(0.5)
    assert result["pixel_ap"] == pytest.approx(expected[1], abs=TOL)
    assert result["pixel_f1_max"] == pytest.approx(expected[2], abs=TOL)
    assert result["pixel_aupro"] == pytest.approx(0.15)  # straight line from (0, 0) to (1, 1)


def test_pixel_single_positive():
    rng = np.random.default_rng(5)
    maps = rng.random((3, 10, 10)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[1, 4, 7] = True
    result = pixel_metrics(maps, masks)
    expected = sklearn_metrics(maps, masks)
    assert (result["pixel_auroc"], result["pixel_ap"], result["pixel_f1_max"]) == pytest.approx(expected, abs=TOL)
    assert result["pixel_aupro"] == pytest.approx(reference_aupro(maps, masks), abs=TOL)


def test_float64_maps_are_scored_as_float32():
    rng = np.random.default_rng(6)
    masks = blob_masks(rng, (2, 12, 12))
    masks[0, 0, 0] = True
    maps = rng.random(masks.shape)
    assert pixel_metrics(maps, masks) == pixel_metrics(maps.astype(np.float32), masks)


@pytest.mark.parametrize("fill", [False, True])
def test_pixel_one_class_missing_is_nan(fill, caplog):
    accumulator = PixelMetricAccumulator()
    accumulator.update(np.random.default_rng(0).random((2, 5, 5)), np.full((2, 5, 5), fill))
    with caplog.at_level(logging.WARNING, logger="visualad_med.evaluation.pixel_metrics"):
        result = accumulator.compute()
    assert set(result) == {"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}
    assert all(math.isnan(v) for v in result.values())
    assert "both classes are needed" in caplog.text


def test_empty_accumulator_raises():
    with pytest.raises(ValueError, match="empty"):
        PixelMetricAccumulator().compute()


def test_accumulator_rejects_bad_input():
    accumulator = PixelMetricAccumulator()
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        accumulator.update(np.zeros((4, 4)), np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="differs"):
        accumulator.update(np.zeros((1, 4, 4)), np.zeros((1, 4, 5), dtype=bool))
    with pytest.raises(ValueError, match="1 non-finite"):
        accumulator.update(np.array([[[0.0, np.inf]]]), np.zeros((1, 1, 2), dtype=bool))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        PixelMetricAccumulator(integration_limit=0.0)
    assert accumulator.num_pixels == 0


# Mean row.


def test_mean_row_ignores_nan():
    rows = [
        {"image_auroc": 0.5, "pixel_aupro": math.nan, "pixel_ap": math.nan},
        {"image_auroc": 0.7, "pixel_aupro": 0.9, "pixel_ap": math.nan},
        {"image_auroc": math.nan, "pixel_aupro": 0.3},
    ]
    means = mean_row(rows)
    assert list(means) == ["image_auroc", "pixel_aupro", "pixel_ap"]
    assert means["image_auroc"] == pytest.approx(0.6)
    assert means["pixel_aupro"] == pytest.approx(0.6)
    assert math.isnan(means["pixel_ap"])


def test_mean_row_empty_raises():
    with pytest.raises(ValueError, match="at least one row"):
        mean_row([])
