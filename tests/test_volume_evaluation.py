"""``visualad-med evaluate`` on volumes: Decathlon and two-folder sets made here, metrics checked independently.

The model is the tiny random one of ``test_infer`` with its map replaced by the windowed brightness
(``brightness_model``), so a bright labelled blob scores high and the numbers are non-trivial; every
metric is recomputed with scikit-learn from the maps that the run saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from visualad_med.evaluation.binned import BinnedVoxelMetrics, region_weights
from visualad_med.apps.cli import main
from visualad_med.evaluation.pixel_metrics import PixelMetricAccumulator

MODEL = ["--head", "untrained", "--backbone", "vit_tiny_patch16_224", "--backbone-weights", "random",
         "--image-size", "32", "--device", "cpu", "--scoring", "visualad"]
SHAPE = (18, 16, 12)
AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])
THRESHOLD = 0.6


def write_case(images: Path, labels: Path, name: str, seed: int, label_name: str | None = None,
               label_shape: tuple[int, ...] = SHAPE) -> None:
    """A noisy head-like volume with a bright blob on some slices, and its label volume."""
    rng = np.random.default_rng(seed)
    data = rng.normal(300.0, 40.0, SHAPE).astype(np.float32)
    data[:2] = 0.0  # background the body mask leaves out
    truth = np.zeros(SHAPE, dtype=np.uint8)
    x, y, z = 5 + seed % 4, 4 + seed % 3, 3 + seed % 5
    truth[x:x + 5, y:y + 4, z:z + 3] = 1
    data[truth > 0] += 250.0
    data[10:13, 10:13, 1:3] += 250.0  # a bright normal region: the metrics are not all perfect
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), images / f"{name}.nii.gz")
    label = truth if label_shape == SHAPE else np.zeros(label_shape, dtype=np.uint8)
    nib.save(nib.Nifti1Image(label, AFFINE), labels / f"{label_name or name}.nii.gz")


def make_decathlon(root: Path, cases: int = 3) -> Path:
    """A Decathlon folder: ``dataset.json`` and ``cases`` image/label pairs."""
    names = [f"case_{k:03d}" for k in range(cases)]
    for k, name in enumerate(names):
        write_case(root / "imagesTr", root / "labelsTr", name, k)
    listing = {"name": "toy", "labels": {"0": "background", "1": "lesion"}, "numTraining": cases, "numTest": 0,
               "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
               "test": []}
    (root / "dataset.json").write_text(json.dumps(listing))
    return root


def evaluate(*args: str | Path) -> int:
    torch.manual_seed(0)
    return main(["evaluate", *(str(a) for a in args), "--threshold", str(THRESHOLD), *MODEL])


def saved(out: Path, root: Path, name: str, labels: str = "labelsTr") -> tuple[np.ndarray, np.ndarray, dict]:
    """The map the run saved, the label volume and the scan's report."""
    anomaly = np.asarray(nib.load(out / "maps" / f"{name}_anomaly.nii.gz").dataobj)
    truth = np.asarray(nib.load(root / labels / f"{name}.nii.gz").dataobj) > 0
    report = json.loads((out / "maps" / f"{name}_report.json").read_text())
    return anomaly, truth, report


def test_decathlon_evaluation_equals_scikit_learn_on_the_saved_maps(tmp_path, brightness_model):
    root = make_decathlon(tmp_path / "msd")
    out = tmp_path / "out"
    assert evaluate("--layout", "msd", "--data", root, "--out", out) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["counts"] == {"listed": 3, "evaluated": 3, "failed": 0}
    for name in ("results.md", "scans.csv", "curves/voxel.png", "curves/voxel_body.png", "curves/slice.png"):
        assert (out / name).is_file()
    maps, truths, slice_scores, slice_truth = [], [], [], []
    for row in results["scans"]:
        anomaly, truth, report = saved(out, root, row["scan"])
        assert row["voxel_ap"] == pytest.approx(average_precision_score(truth.ravel(), anomaly.ravel()), abs=1e-9)
        assert row["voxel_auroc"] == pytest.approx(roc_auc_score(truth.ravel(), anomaly.ravel()), abs=1e-9)
        predicted = anomaly > THRESHOLD
        dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
        assert row["dice"] == pytest.approx(dice, abs=1e-12)
        axis = report["scores"]["slice_axis"]
        scores = report["scores"]["per_slice"]
        slice_scores += scores
        slice_truth += truth.any(axis=tuple(a for a in range(3) if a != axis)).tolist()
        maps.append(anomaly.ravel())
        truths.append(truth.ravel())
    pooled = results["pooled"]
    floor = min(s for s in slice_scores if s is not None)
    filled = [floor if s is None else s for s in slice_scores]
    assert pooled["slice_auroc"] == pytest.approx(roc_auc_score(slice_truth, filled), abs=1e-9)
    assert 0.5 < pooled["slice_auroc"] < 1.0
    all_maps, all_truth = np.concatenate(maps), np.concatenate(truths)
    assert pooled["voxel_ap"] == pytest.approx(average_precision_score(all_truth, all_maps), abs=2e-3)
    assert 0.1 < pooled["voxel_ap"] < 1.0
    predicted = all_maps > THRESHOLD
    assert pooled["dice"] == pytest.approx(2 * (predicted & all_truth).sum() / (predicted.sum() + all_truth.sum()))


def test_two_folders_are_matched_by_name_and_a_label_on_another_grid_is_refused(tmp_path, brightness_model, caplog):
    scans, labels = tmp_path / "scans", tmp_path / "labels"
    write_case(scans, labels, "alpha", 0, label_name="alpha_seg")
    write_case(scans, labels, "beta", 1)
    write_case(scans, labels, "gamma", 2, label_shape=(18, 16, 11))
    write_case(scans, tmp_path / "elsewhere", "delta", 3)  # no label: left out with a warning
    out = tmp_path / "out"
    before = {p: p.read_bytes() for p in sorted(scans.iterdir())}
    assert evaluate("--data", scans, "--labels", labels, "--out", out) == 1
    results = json.loads((out / "results.json").read_text())
    assert [row["scan"] for row in results["scans"]] == ["alpha", "beta"]
    assert results["failed"] == ["gamma"]
    assert "label volume of shape (18, 16, 11) is not on the scan's grid (18, 16, 12)" in caplog.text
    assert str(labels / "gamma.nii.gz") in caplog.text
    assert "delta" in caplog.text and "no label" in caplog.text
    assert {p: p.read_bytes() for p in sorted(scans.iterdir())} == before


def test_a_decathlon_folder_without_dataset_json_is_refused(tmp_path, caplog):
    (tmp_path / "msd").mkdir()
    assert evaluate("--layout", "msd", "--data", tmp_path / "msd", "--out", tmp_path / "out") == 2
    assert "dataset.json" in caplog.text and "not found" in caplog.text


def _neighbours_26(point: tuple[int, int, int], shape: tuple[int, ...]):
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dz in (-1, 0, 1):
                q = (point[0] + dx, point[1] + dy, point[2] + dz)
                if q != point and all(0 <= q[i] < shape[i] for i in range(3)):
                    yield q


def slow_aupro_3d(scores: np.ndarray, truth: np.ndarray, limit: float = 0.3) -> float:
    """AUPRO by definition: 26-connected regions by flood fill, PRO and FPR at every distinct score."""
    regions, seen = [], np.zeros_like(truth)
    for start in zip(*np.nonzero(truth)):
        if seen[start]:
            continue
        stack, region = [start], []
        seen[start] = True
        while stack:
            point = stack.pop()
            region.append(point)
            for q in _neighbours_26(point, truth.shape):
                if truth[q] and not seen[q]:
                    seen[q] = True
                    stack.append(q)
        regions.append(tuple(np.array(region).T))
    fpr, pro = [0.0], [0.0]
    for t in np.unique(scores)[::-1]:
        fpr.append(float((scores[~truth] >= t).mean()))
        pro.append(float(np.mean([(scores[r] >= t).mean() for r in regions])))
    fpr, pro = np.array(fpr), np.array(pro)
    end = int(np.searchsorted(fpr, limit))
    at_limit = np.interp(limit, fpr[end - 1:end + 1], pro[end - 1:end + 1])
    return float(np.trapezoid(np.r_[pro[:end], at_limit], np.r_[fpr[:end], limit])) / limit


def test_3d_aupro_matches_the_definition_with_26_connected_regions():
    rng = np.random.default_rng(4)
    truth = np.zeros((9, 8, 7), dtype=bool)
    truth[1:4, 1:3, 1:3] = True
    truth[4, 3, 3] = True  # touches the first region only by a corner: the same 3D region
    truth[6:8, 5:7, 4:6] = True
    scores = rng.normal(size=truth.shape).astype(np.float32) + 1.2 * truth
    expected = slow_aupro_3d(scores, truth)
    exact = PixelMetricAccumulator()
    exact.update_volume(scores, truth)
    assert exact.compute()["pixel_aupro"] == pytest.approx(expected, abs=1e-9)
    assert region_weights(truth)[1] == 2
    binned = BinnedVoxelMetrics()
    binned.update(scores, truth, *region_weights(truth))
    assert binned.compute()["voxel_aupro"] == pytest.approx(expected, abs=2e-3)


def test_binned_metrics_agree_with_scikit_learn_in_fixed_memory():
    rng = np.random.default_rng(5)
    binned = BinnedVoxelMetrics()
    sizes = (binned.normal.nbytes, binned.anomalous.nbytes, binned.region_weight.nbytes)
    scores, labels = [], []
    for _ in range(4):
        truth = rng.random((20, 20, 10)) < 0.05
        values = (rng.normal(size=truth.shape) + 1.0 * truth).astype(np.float32)
        binned.update(values, truth)
        scores.append(values.ravel())
        labels.append(truth.ravel())
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    metrics = binned.compute()
    assert metrics["voxel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-3)
    assert metrics["voxel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=2e-3)
    assert (binned.normal.nbytes, binned.anomalous.nbytes, binned.region_weight.nbytes) == sizes
