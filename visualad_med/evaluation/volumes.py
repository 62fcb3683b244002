"""Zero-shot evaluation on volumes against label volumes, through exactly the path of ``visualad-med infer``.

Each scan is loaded, windowed, sliced, run through the model and reassembled by
:func:`~visualad_med.inference.folder.run_folder` (as ``infer`` does), its outputs are
written by the same writers into ``<out>/maps/``, and its map is then scored
against its label volume (voxels above 0 anomalous), which must lie on the
scan's grid. Per scan and pooled over the cohort:

* voxel AUROC and AP over the whole volume and over the body (voxels brighter
  than 10 % of the volume's brightest after windowing, :func:`~visualad_med.model.body_reference.volume_body_mask`);
* voxel F1-max, which is the best Dice over all thresholds;
* 3D AUPRO: regions are the 26-connected components of each label volume, FPR limit 0.3;
* slice AUROC and AP: each slice's score (top-1 % mean of its map, as in the
  report) against "the slice holds a labelled voxel"; slices the model skipped
  (no body) count as the lowest score of the cohort;
* Dice and IoU of the mask at the threshold (the head's, or ``--threshold``).

Per-scan numbers are exact (:class:`~visualad_med.evaluation.pixel_metrics.PixelMetricAccumulator`);
pooled voxel numbers come from fixed-size histograms
(:class:`~visualad_med.evaluation.binned.BinnedVoxelMetrics`), so memory is bounded
by one scan whatever the cohort's size. "Mean over scans" averages the per-scan
numbers where they are defined.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visualad_med.io.atomic import atomic_path
from .binned import BinnedVoxelMetrics, region_weights
from visualad_med.datasets.volume_pairs import VolumePair
from .results import _environment, _head_identity
from .metrics import auroc, average_precision, curve_points, image_metrics
from .pixel_metrics import PixelMetricAccumulator
from visualad_med.model.torch_model import VisualAD
from visualad_med.model.body_reference import volume_body_mask
from .report import plot_curves, write_results
from visualad_med.io.hashing import file_sha256
from visualad_med.model.cohort import CohortSettings
from visualad_med.inference.folder import run_folder
from visualad_med.inference.scan import ScanResult
from visualad_med.inference.settings import RunSettings
from visualad_med.io import load_scan

logger = logging.getLogger(__name__)

FORMAT = "visualad_med.volume_evaluation/1"
PROTOCOL = (
    "the infer path (load, window, slice, model, reassemble) per scan; label voxels > 0 anomalous, on the scan's "
    "grid; body = windowed intensity above 10% of the volume's brightest; AUPRO over 26-connected 3D regions, FPR "
    "limit 0.3; slice score = top-1% mean of the slice's map, slices without body lowest; voxel F1-max = best "
    "Dice; pooled voxel metrics from 2**20-bin score histograms"
)
VOLUME_METRICS = ("voxel_auroc", "voxel_ap", "body_auroc", "body_ap", "voxel_aupro", "slice_auroc", "slice_ap",
                  "dice", "iou", "best_dice")
"""Columns of the result tables, in order."""

AFFINE_TOLERANCE_MM = 1e-3


def check_same_grid(volume: torch.Tensor, label: torch.Tensor, label_path: Path) -> None:
    """Raise ``ValueError`` naming ``label_path`` unless the label lies on the volume's voxel grid."""
    if tuple(label.shape) != tuple(volume.shape):
        raise ValueError(f"{label_path}: label volume of shape {tuple(label.shape[1:])} is not on the scan's grid "
                         f"{tuple(volume.shape[1:])}; resample it onto the scan first")
    difference = float((label.affine.double() - volume.affine.double()).abs().max())
    if difference > AFFINE_TOLERANCE_MM:
        raise ValueError(f"{label_path}: label affine differs from the scan's by up to {difference:.4g} mm "
                         f"(label {label.affine.numpy().round(4).tolist()}, scan "
                         f"{volume.affine.numpy().round(4).tolist()}); resample it onto the scan first")


def overlap(predicted: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """``(|P and G|, |P|, |G|)`` of two bool arrays."""
    return int(np.count_nonzero(predicted & truth)), int(np.count_nonzero(predicted)), int(np.count_nonzero(truth))


def dice_iou(intersection: int, predicted: int, truth: int) -> tuple[float, float]:
    """Dice and IoU from voxel counts; NaN when both masks are empty."""
    union = predicted + truth - intersection
    if predicted + truth == 0:
        return math.nan, math.nan
    return 2.0 * intersection / (predicted + truth), intersection / union


def _pair_metric(function, scores: np.ndarray, labels: np.ndarray) -> float:
    """``function(scores, labels)``, NaN unless both classes occur."""
    return function(scores, labels) if 0 < labels.sum() < labels.size else math.nan


def fill_skipped(scores: Sequence[float | None]) -> np.ndarray:
    """Slice scores with the slices the model skipped (``None``, no body) at the lowest score given."""
    known = [s for s in scores if s is not None]
    floor = min(known) if known else 0.0
    return np.array([floor if s is None else s for s in scores], dtype=np.float64)


def slice_labels(truth: np.ndarray, axis: int) -> np.ndarray:
    """``(Z,)`` bool: which slices along ``axis`` of a ``(X, Y, Z)`` label hold a labelled voxel."""
    other = tuple(a for a in range(truth.ndim) if a != axis)
    return truth.any(axis=other)


@dataclass
class CohortTally:
    """What a volume evaluation keeps across scans: histograms, slice scores, overlap counts, per-scan rows."""

    voxels: BinnedVoxelMetrics = field(default_factory=BinnedVoxelMetrics)
    body: BinnedVoxelMetrics = field(default_factory=BinnedVoxelMetrics)
    slice_scores: list[float | None] = field(default_factory=list)
    slice_truth: list[bool] = field(default_factory=list)
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add_scan(self, name: str, anomaly: np.ndarray, truth: np.ndarray, body: np.ndarray,
                 per_slice: Sequence[float | None], axis: int, threshold: float) -> dict[str, Any]:
        """Score one scan, add it to the pooled tallies and return its row.

        Args:
            name: the scan's name.
            anomaly: ``(X, Y, Z)`` float32 map.
            truth: ``(X, Y, Z)`` bool label.
            body: ``(X, Y, Z)`` bool body voxels.
            per_slice: score of each slice along ``axis`` (``None``: not run).
            axis: array axis of the slices.
            threshold: mask threshold on the map.
        """
        exact = PixelMetricAccumulator()
        exact.update_volume(anomaly, truth)
        whole = exact.compute() if truth.any() and not truth.all() else dict.fromkeys(
            ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"), math.nan)
        del exact
        weights, regions = region_weights(truth)
        self.voxels.update(anomaly, truth, weights, regions)
        body_scores, body_truth = anomaly[body], truth[body]
        self.body.update(body_scores, body_truth)
        counts = overlap(anomaly > threshold, truth)
        self.counts = [total + count for total, count in zip(self.counts, counts)]
        truth_slices = slice_labels(truth, axis)
        filled = fill_skipped(per_slice)
        self.slice_scores.extend(per_slice)
        self.slice_truth.extend(truth_slices.tolist())
        dice, iou = dice_iou(*counts)
        row = {
            "scan": name, "voxels": int(truth.size), "label_voxels": int(truth.sum()), "regions": regions,
            "slices": len(per_slice), "label_slices": int(truth_slices.sum()),
            "voxel_auroc": whole["pixel_auroc"], "voxel_ap": whole["pixel_ap"],
            "body_auroc": _pair_metric(auroc, body_scores, body_truth),
            "body_ap": _pair_metric(average_precision, body_scores, body_truth),
            "voxel_aupro": whole["pixel_aupro"],
            "slice_auroc": _pair_metric(auroc, filled, truth_slices),
            "slice_ap": _pair_metric(average_precision, filled, truth_slices),
            "dice": dice, "iou": iou, "best_dice": whole["pixel_f1_max"],
        }
        self.rows.append(row)
        return row

    def pooled(self) -> dict[str, float]:
        """The cohort's metrics: voxels from the histograms, slices pooled, Dice and IoU from summed counts."""
        voxels, body = self.voxels.compute(), self.body.compute()
        scores, truth = fill_skipped(self.slice_scores), np.array(self.slice_truth, dtype=bool)
        slices = image_metrics(scores, truth) if 0 < truth.sum() < truth.size else {}
        dice, iou = dice_iou(*self.counts)
        return {"voxel_auroc": voxels["voxel_auroc"], "voxel_ap": voxels["voxel_ap"],
                "body_auroc": body["voxel_auroc"], "body_ap": body["voxel_ap"], "voxel_aupro": voxels["voxel_aupro"],
                "slice_auroc": slices.get("image_auroc", math.nan), "slice_ap": slices.get("image_ap", math.nan),
                "dice": dice, "iou": iou, "best_dice": voxels["voxel_f1_max"]}

    def mean_over_scans(self) -> dict[str, float]:
        """Each metric averaged over the scans where it is defined."""
        means = {}
        for key in VOLUME_METRICS:
            values = [row[key] for row in self.rows if not math.isnan(row[key])]
            means[key] = math.fsum(values) / len(values) if values else math.nan
        return means


def _scorer(pairs: Sequence[VolumePair], tally: CohortTally) -> Callable[[ScanResult, dict], None]:
    """What volume evaluation does with each scan once ``infer``'s outputs are written: score it against its label."""
    labels = {pair.scan.name: pair.label for pair in pairs}

    def score(result: ScanResult, report: dict) -> None:
        label_path = labels[result.scan.source.name]
        label = load_scan(label_path, window=None).volume
        check_same_grid(result.scan.volume, label, label_path)
        window = result.scan.window
        body = volume_body_mask(result.scan.volume[0].as_tensor(), (window.low, window.high)).numpy()
        tally.add_scan(result.scan.source.name, result.anomaly.numpy(), label[0].numpy() > 0, body,
                       result.scores.scores, result.scores.axis, result.threshold)

    return score


def _markdown(results: dict[str, Any]) -> str:
    """The results as a markdown table: pooled, mean over scans, then one row per scan (percent)."""
    header = "| scans | " + " | ".join(VOLUME_METRICS) + " |"
    lines = [f"# Volume evaluation: {results['data']}", "", header, "|---" * (len(VOLUME_METRICS) + 1) + "|"]

    def cells(row: dict[str, Any]) -> str:
        return " | ".join("n/a" if math.isnan(row[key]) else f"{100 * row[key]:.1f}" for key in VOLUME_METRICS)

    lines.append(f"| pooled | {cells(results['pooled'])} |")
    lines.append(f"| mean over scans | {cells(results['mean_over_scans'])} |")
    lines.extend(f"| {row['scan']} | {cells(row)} |" for row in results["scans"])
    lines += ["", f"Threshold {results['threshold']:.4g}; {results['counts']['evaluated']} scans evaluated, "
              f"{results['counts']['failed']} failed. Metrics in percent. Protocol: {PROTOCOL}.", ""]
    return "\n".join(lines)


def _write_scan_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """``scans.csv``: one row per evaluated scan."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["scan"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_curves(tally: CohortTally, pooled: dict[str, float], out_dir: Path) -> list[Path]:
    """ROC/PR PNGs of the pooled voxels (whole and body) and slices."""
    written = []
    for name, accumulator, prefix in (("voxel", tally.voxels, "voxel"), ("voxel_body", tally.body, "body")):
        points = accumulator.curve_points()
        if points is not None:
            written.append(plot_curves(points, f"pooled {name.replace('_', ' over the ')}",
                                       out_dir / "curves" / f"{name}.png", pooled[f"{prefix}_auroc"],
                                       pooled[f"{prefix}_ap"]))
    if any(s is not None for s in tally.slice_scores):
        points = curve_points(fill_skipped(tally.slice_scores), np.array(tally.slice_truth))
        if points is not None:
            written.append(plot_curves(points, "pooled slices", out_dir / "curves" / "slice.png",
                                       pooled["slice_auroc"], pooled["slice_ap"]))
    return written


def evaluate_volumes(
    model: VisualAD,
    pairs: Sequence[VolumePair],
    out_dir: str | Path,
    settings: RunSettings,
    *,
    data: str = "",
    head: str | Path | None = None,
    command: Sequence[str] | None = None,
    cohort: CohortSettings | None = None,
) -> dict[str, Any]:
    """Evaluate the model on labelled volumes; writes ``results.json``, ``results.md``, ``scans.csv``,
    ``curves/*.png`` and the per-scan outputs of ``infer`` in ``maps/``; returns the results.

    A scan that fails (unreadable, label on another grid) is logged, listed under ``failed``
    and the evaluation goes on. Every scan is recomputed (``settings.overwrite`` is forced on). The
    maps are stored as float32 (``settings.map_dtype`` is forced), so that the metrics can be
    recomputed from the files. With ``cohort``, the scans are scored against each other
    (:mod:`visualad_med.inference.cohort`).
    """
    out_dir = Path(out_dir)
    maps_dir = out_dir / "maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tally = CohortTally()
    stored_exactly = replace(settings, overwrite=True, map_dtype="float32")
    run = run_folder(model, [pair.scan for pair in pairs], maps_dir, stored_exactly,
                     head_sha256=file_sha256(Path(head)) if head else None, cohort=cohort,
                     after_scan=_scorer(pairs, tally), where=data)
    failed = run.failed
    pooled = tally.pooled() if tally.rows else dict.fromkeys(VOLUME_METRICS, math.nan)
    device = next(model.parameters()).device
    chosen = settings.map_settings(model)
    results = {
        "format": FORMAT, "protocol": PROTOCOL, "data": data, "threshold": run.threshold,
        "counts": {"listed": len(pairs), "evaluated": len(tally.rows), "failed": failed},
        "pooled": pooled, "mean_over_scans": tally.mean_over_scans() if tally.rows else pooled,
        "scans": tally.rows, "failed": [p.scan.name for p in pairs if p.scan.name not in
                                        {row["scan"] for row in tally.rows}],
        "model": {"backbone": model.config.backbone, "image_size": model.config.image_size,
                  "taps": list(model.config.taps), "scoring": chosen.scoring,
                  "map_reference": chosen.map_reference, **_head_identity(model, head)},
        "cohort": run.cohort,
        "settings": {"planes": list(settings.planes), "window": settings.window, "batch_size": settings.batch_size},
        "environment": _environment(device), "command": list(command or []),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_results(results, out_dir, markdown=_markdown(results))
    _write_scan_csv(tally.rows, out_dir / "scans.csv")
    _write_curves(tally, pooled, out_dir)
    logger.info("%d scans evaluated, %d failed; results in %s", run.succeeded, failed, out_dir)
    return results
