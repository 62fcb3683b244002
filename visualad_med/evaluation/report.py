"""Evaluation reports: ``results.json``, the ``results.md`` table, ``scores.csv``, ROC / PR curves and overlays.

The table is the one papers print: one row per class and a Mean row, metrics
in percent with one decimal. A metric the data cannot define is written
``n/a (<reason>)``, e.g. ``n/a (no masks)`` for pixel metrics of a set without
masks, or ``n/a (only anomalous images)`` for image metrics of a class without
normal images; ``results.json`` holds ``null`` there and the reason beside it.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from visualad_med.io.atomic import atomic_path
from .metrics import CurvePoints
from visualad_med.io.overlay import heat_overlay, save_png

IMAGE_METRICS: tuple[str, ...] = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_METRICS: tuple[str, ...] = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
HEADERS: dict[str, str] = {
    "image_auroc": "Image AUROC",
    "image_ap": "Image AP",
    "image_f1_max": "Image F1-max",
    "pixel_auroc": "Pixel AUROC",
    "pixel_ap": "Pixel AP",
    "pixel_f1_max": "Pixel F1-max",
    "pixel_aupro": "Pixel AUPRO",
}
RESULT_FILES: tuple[str, ...] = ("results.json", "results.md")


def safe_name(name: str) -> str:
    """``name`` with every run of characters other than letters, digits, ``.``, ``_``, ``-`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


def _jsonable(value: Any) -> Any:
    """``value`` with NaN and infinities as None, numpy scalars as Python numbers, paths as strings."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def percent_cell(value: float, reason: str | None) -> str:
    """One table cell: ``87.3`` for 0.873, or ``n/a (<reason>)`` when the value is NaN."""
    if math.isnan(value):
        return f"n/a ({reason or 'undefined'})"
    return f"{100.0 * value:.1f}"


def _table_row(label: str, row: Mapping[str, Any]) -> str:
    cells = [label, str(row["counts"]["normal"]), str(row["counts"]["anomalous"])]
    for keys, level in ((IMAGE_METRICS, "image"), (PIXEL_METRICS, "pixel")):
        cells += [percent_cell(row["metrics"][key], row["undefined"][level]) for key in keys]
    return "| " + " | ".join(cells) + " |"


def markdown_table(results: Mapping[str, Any]) -> str:
    """The per-class table with a Mean row, in percent with one decimal.

    Args:
        results: the dict :func:`visualad_med.evaluation.images.evaluate` returns.

    Returns:
        A Markdown table (header, alignment row, one row per class, Mean row).
    """
    header = ["Class", "Normal", "Anomalous", *(HEADERS[k] for k in (*IMAGE_METRICS, *PIXEL_METRICS))]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    lines += [_table_row(name, row) for name, row in results["classes"].items()]
    lines.append(_table_row("Mean", results["mean"]))
    return "\n".join(lines)


def markdown_report(results: Mapping[str, Any]) -> str:
    """``results.md``: a short provenance header, the table and its notes."""
    data, model, counts = results["data"], results["model"], results["mean"]["counts"]
    config = model["config"]
    taps = ",".join(str(t) for t in config["taps"])
    source = f"`{data['root']}` (layout {data['layout']}, split {data['split']})" if data["root"] else data["name"]
    lines = [
        "# VisualAD zero-shot evaluation",
        "",
        f"- Data: {source}: {counts['evaluated']} images evaluated ({counts['normal']} normal, {counts['anomalous']} anomalous), "
        f"{counts['unreadable']} unreadable and skipped, {counts['mask_problems']} anomalous left out of pixel "
        "metrics (mask missing, unreadable or of another size)",
        f"- Model: backbone `{config['backbone']}` at {config['image_size']} px, taps {taps}, "
        f"scoring {config.get('scoring', 'visualad')}, map reference {config.get('map_reference', 'none')}, "
        f"head `{model['head_sha256']}`",
        f"- Protocol: {results['protocol']}",
        "",
        markdown_table(results),
        "",
        "Metrics in percent. Image metrics use the image score; pixel metrics use the images with masks.",
        "",
    ]
    return "\n".join(lines)


def write_results(results: Mapping[str, Any], out_dir: Path, markdown: str | None = None) -> list[Path]:
    """Write ``results.json`` (NaN as null) and ``results.md`` atomically; returns their paths.

    ``markdown`` is the text of ``results.md``; by default :func:`markdown_report` of ``results``.
    """
    out_dir = Path(out_dir)
    json_path, md_path = (out_dir / name for name in RESULT_FILES)
    with atomic_path(json_path) as temporary:
        temporary.write_text(json.dumps(_jsonable(results), indent=2) + "\n", encoding="utf-8")
    with atomic_path(md_path) as temporary:
        temporary.write_text(markdown_report(results) if markdown is None else markdown, encoding="utf-8")
    return [json_path, md_path]


def write_scores(per_class: Mapping[str, tuple[Sequence[str], Sequence[int], Sequence[float]]], path: Path) -> Path:
    """Write ``class,label,score,path`` for every evaluated image.

    Args:
        per_class: class name -> (image paths, labels 0/1, image scores), equal lengths.
        path: the CSV file.
    """
    with atomic_path(Path(path)) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "label", "score", "path"])
        for class_name, (paths, labels, scores) in per_class.items():
            for image, label, score in zip(paths, labels, scores):
                writer.writerow([class_name, label, f"{score:.6g}", image])
    return Path(path)


def plot_curves(
    points: CurvePoints, title: str, path: Path, auroc: float | None = None, ap: float | None = None
) -> Path:
    """Save a two-panel PNG: the ROC curve and the precision-recall curve.

    Args:
        points: curve points (thresholds descending).
        title: figure title, e.g. ``"LGG: image level"``.
        path: PNG file (its folder is created).
        auroc: shown in the ROC legend when given.
        ap: shown in the PR legend when given.
    """
    figure = Figure(figsize=(9, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    roc, pr = figure.subplots(1, 2)
    roc_label = "ROC" if auroc is None else f"AUROC {100 * auroc:.1f}"
    roc.plot(np.r_[0.0, points.fpr], np.r_[0.0, points.tpr], label=roc_label)
    roc.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.02))
    pr_label = "PR" if ap is None else f"AP {100 * ap:.1f}"
    pr.step(np.r_[0.0, points.tpr], np.r_[points.precision[0], points.precision], where="pre", label=pr_label)
    pr.axhline(points.prevalence, linestyle=":", color="grey", label="chance")
    pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    for axes in (roc, pr):
        axes.legend(loc="best")
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return path


class OverlaySample(NamedTuple):
    """One image kept for an overlay PNG, at the model's resolution ``S``.

    Attributes:
        path: the image file.
        label: 0 normal, 1 anomalous.
        rgb: ``(S, S, 3)`` uint8 image as the model saw it.
        anomaly_map: ``(S, S)`` float32 smoothed map.
        mask: ``(S, S)`` bool ground truth, None without a mask.
    """

    path: str
    label: int
    rgb: np.ndarray
    anomaly_map: np.ndarray
    mask: np.ndarray | None


def write_overlays(samples: Mapping[str, Sequence[OverlaySample]], out_dir: Path) -> list[Path]:
    """Write ``overlays/<class>/{normal,anomalous}_<stem>.png``: map on image, mask outline in white.

    Each class gets one colour range (min to max of its samples' maps), so its
    normal and anomalous overlays can be compared.

    Args:
        samples: class name -> the samples to draw.
        out_dir: output folder.

    Returns:
        The PNG paths written.
    """
    written = []
    for class_name, class_samples in samples.items():
        if not class_samples:
            continue
        folder = Path(out_dir) / "overlays" / safe_name(class_name)
        folder.mkdir(parents=True, exist_ok=True)
        low = min(float(s.anomaly_map.min()) for s in class_samples)
        high = max(float(s.anomaly_map.max()) for s in class_samples)
        for sample in class_samples:
            kind = "anomalous" if sample.label else "normal"
            image = heat_overlay(sample.rgb, sample.anomaly_map, (low, high), alpha=0.5, mask=sample.mask)
            written.append(save_png(image, folder / f"{kind}_{Path(sample.path).stem}.png"))
    return written
