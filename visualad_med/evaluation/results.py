"""The results of a 2D evaluation: per-class counts, metrics and reasons, the Mean row, curves, provenance.

Provenance (the head's identity, the environment) is recorded the same way by the volume
protocol (:mod:`visualad_med.evaluation.volumes`).
"""

from __future__ import annotations

import logging
import math
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from visualad_med.datasets import AnomalyDataset
from .image_scoring import _ClassTally
from .metrics import CurvePoints, curve_points, image_metrics
from visualad_med.model.torch_model import VisualAD
from visualad_med.model.scorings import UNTRAINED
from .report import IMAGE_METRICS, PIXEL_METRICS, plot_curves, safe_name
from visualad_med.io.hashing import file_sha256

logger = logging.getLogger(__name__)


def _image_undefined(labels: np.ndarray) -> str | None:
    """Why image metrics are undefined for these labels, or None when they are defined."""
    if labels.size == 0:
        return "no readable images"
    if labels.all():
        return "only anomalous images"
    if not labels.any():
        return "only normal images"
    return None


def _pixel_undefined(tally: _ClassTally, has_masks: bool) -> str | None:
    """Why pixel metrics are undefined for a class, or None when they are defined."""
    if not has_masks:
        return "no masks"
    if tally.pixel_images == 0:
        return "no readable images with masks"
    if tally.anomalous_pixels == 0:
        return "no anomalous pixels"
    if tally.normal_pixels == 0:
        return "no normal pixels"
    return None


def _class_result(
    name: str, dataset: AnomalyDataset, tally: _ClassTally, has_masks: bool, problems: list[dict[str, str | None]]
) -> tuple[dict[str, Any], dict[str, CurvePoints | None]]:
    """Counts, metrics, reasons for undefined metrics, and curve points of one class."""
    listed = [r for r in dataset.records if r.class_name == name]
    seen = set(tally.paths)
    unreadable = [str(r.path) for r in listed if str(r.path) not in seen]
    labels = np.asarray(tally.labels, dtype=bool)
    scores = np.asarray(tally.scores, dtype=np.float64)
    undefined = {"image": _image_undefined(labels), "pixel": _pixel_undefined(tally, has_masks)}
    metrics = dict.fromkeys((*IMAGE_METRICS, *PIXEL_METRICS), math.nan)
    curves: dict[str, CurvePoints | None] = {"image": None, "pixel": None}
    if undefined["image"] is None:
        metrics.update(image_metrics(scores, labels))
        curves["image"] = curve_points(scores, labels)
    if undefined["pixel"] is None:
        metrics.update(tally.pixels.compute())
        curves["pixel"] = tally.pixels.curve_points()
    for level, reason in undefined.items():
        if reason is not None:
            logger.warning("class %s: %s-level metrics undefined (%s)", name, level, reason)
    counts = {
        "listed": len(listed),
        "evaluated": int(labels.size),
        "normal": int((~labels).sum()),
        "anomalous": int(labels.sum()),
        "unreadable": len(unreadable),
        "mask_problems": len(problems),
        "pixel_images": tally.pixel_images,
    }
    result = {
        "counts": counts,
        "has_masks": has_masks,
        "metrics": metrics,
        "undefined": undefined,
        "unreadable": unreadable,
        "mask_problems": problems,
    }
    return result, curves


def _class_rows(
    dataset: AnomalyDataset,
    tallies: Mapping[str, _ClassTally],
    masked: set[str],
    problems: Mapping[str, list[dict[str, str | None]]],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, CurvePoints | None]]]:
    """:func:`_class_result` and curve points of every class of the data set; logs the unreadable images."""
    rows, curves = {}, {}
    for name in dataset.classes:
        rows[name], curves[name] = _class_result(
            name, dataset, tallies[name], name in masked, problems.get(name, [])
        )
    unreadable = sum(row["counts"]["unreadable"] for row in rows.values())
    if unreadable:
        logger.warning("%d unreadable image(s) skipped", unreadable)
    return rows, curves


def _mean_result(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The Mean row: metric means over the classes where defined, summed counts, shared reasons."""
    metrics = {}
    for key in (*IMAGE_METRICS, *PIXEL_METRICS):
        values = [row["metrics"][key] for row in rows.values() if not math.isnan(row["metrics"][key])]
        metrics[key] = math.fsum(values) / len(values) if values else math.nan
    undefined = {}
    for level, keys in (("image", IMAGE_METRICS), ("pixel", PIXEL_METRICS)):
        reasons = {row["undefined"][level] for row in rows.values()}
        if not all(math.isnan(metrics[k]) for k in keys):
            undefined[level] = None
        else:
            undefined[level] = reasons.pop() if len(reasons) == 1 else "undefined in every class"
    counts = {key: sum(row["counts"][key] for row in rows.values()) for key in next(iter(rows.values()))["counts"]}
    return {"counts": counts, "has_masks": any(row["has_masks"] for row in rows.values()), "metrics": metrics,
            "undefined": undefined}


def _write_curves(
    rows: Mapping[str, Mapping[str, Any]], curves: Mapping[str, Mapping[str, CurvePoints | None]], out_dir: Path
) -> list[Path]:
    """``curves/<class>_{image,pixel}.png`` for every class and level with defined metrics."""
    written = []
    for name, class_curves in curves.items():
        metrics = rows[name]["metrics"]
        for level, points in class_curves.items():
            if points is not None:
                path = out_dir / "curves" / f"{safe_name(name)}_{level}.png"
                title = f"{name}: {level} level"
                written.append(plot_curves(points, title, path, metrics[f"{level}_auroc"], metrics[f"{level}_ap"]))
    return written


def _head_identity(model: VisualAD, head: str | Path | None) -> dict[str, str | None]:
    """The head file and its sha256; ``untrained`` for a fresh head, ``unknown`` when a trained one has no file."""
    if head is not None:
        return {"head": str(head), "head_sha256": file_sha256(Path(head))}
    fresh = not model.config.training and model.settings.threshold is None
    return {"head": None, "head_sha256": UNTRAINED if fresh else "unknown (head file not given)"}


def _environment(device: torch.device) -> dict[str, str]:
    """Versions and device, for provenance."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}
