"""Zero-shot evaluation: the model over a labelled 2D data set, metrics per class, results on disk.

Protocol, as in the zero-shot anomaly detection literature (MVFA, AnomalyCLIP,
VisualAD): each image is resized to the model's input side ``S`` and the
smoothed map ``map`` ``(S, S)`` is compared with the ground-truth mask resized
to ``S x S`` (bilinear, binarised at 0.5); the image score is the model's
``score`` (mean of the top 1 % of ``map``). Metrics (:mod:`visualad_med.evaluation.metrics`)
are computed class by class: image AUROC, AP and F1-max; pixel AUROC, AP,
F1-max and AUPRO (regions per 2D image, FPR limit 0.3) over the images that have
a mask. The Mean row averages each metric over the classes where it is defined.

Maps are streamed: each batch feeds its class's
:class:`~visualad_med.evaluation.metrics.PixelMetricAccumulator` and is dropped; only image
scores and a few overlay samples per class are kept.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from visualad_med.datasets import AnomalyDataset, build_dataset, collate_skip_invalid
from visualad_med.model.cohort import CohortSettings, fuse_patch_scores, head_patch_scores, patch_maps
from .metrics import CurvePoints, PixelMetricAccumulator, curve_points, image_metrics
from visualad_med.model.visualad import VisualAD, top_fraction_mean
from visualad_med.model.mutual import cohort_scores, nearest_candidates, stack_features
from .report import IMAGE_METRICS, PIXEL_METRICS, RESULT_FILES, OverlaySample, plot_curves, safe_name
from .report import write_overlays, write_results, write_scores
from visualad_med.io.hashing import file_sha256
from visualad_med.model.devices import autocast, resolve_device

logger = logging.getLogger(__name__)

FORMAT = "visualad_med.evaluation/1"
DEFAULT_RESIZE = "pad"
"""How evaluated images reach the model's square input: as volume slices do (aspect kept, padded), so the
numbers are made the way the product runs (measured: polyp/skin pixel AUROC 79.3 squashed, 81.4 padded; LGG
image AUROC 84.8 and 83.7, within the seed spread of 1.4); see :data:`~visualad_med.io.images.RESIZE_POLICIES`."""
PROTOCOL = (
    "images letterboxed into S x S as volume slices are (longest side to S, padded; or squashed with --resize "
    "squash); maps at S x S against masks placed the same way (bilinear, binarised at 0.5), padding not scored; "
    "image score = mean of the top 1% of the smoothed map; AUPRO regions per 2D image (8-connected), FPR limit 0.3; "
    "Mean = mean over classes of each metric where it is defined"
)


@dataclass
class _ClassTally:
    """What the run keeps for one class."""

    paths: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    pixels: PixelMetricAccumulator = field(default_factory=PixelMetricAccumulator)
    pixel_images: int = 0
    anomalous_pixels: int = 0
    normal_pixels: int = 0
    overlays: list[OverlaySample] = field(default_factory=list)


def _load_dataset(
    model: VisualAD,
    data: AnomalyDataset | str | Path,
    layout: str | None,
    split: str,
    classes: Iterable[str] | None,
    resize: str,
) -> AnomalyDataset:
    """The data set to evaluate, read at the model's input size with the ``skip`` mask policy."""
    config = model.config
    if isinstance(data, AnomalyDataset):
        if data.image_size != config.image_size:
            raise ValueError(
                f"the data set serves {data.image_size} px images but the model expects {config.image_size} px"
            )
        return data
    if layout is None:
        raise ValueError(f"a layout is needed to read the data root {data}")
    return build_dataset(layout, data, config.image_size, config.mean, config.std, split=split, classes=classes,
                         missing_mask="skip", resize=resize)


def _classes_with_masks(dataset: AnomalyDataset) -> set[str]:
    """Classes where some image has a ground-truth mask (normal images of a masked set count)."""
    return {record.class_name for record in dataset.records if record.has_mask}


def _mask_problems(dataset: AnomalyDataset, masked: set[str]) -> dict[str, list[dict[str, str | None]]]:
    """Per class, the anomalous images of a masked class left out of pixel metrics (mask missing or unusable)."""
    problems: dict[str, list[dict[str, str | None]]] = {}
    for record in dataset.records:
        if record.label == 1 and not record.has_mask and record.class_name in masked:
            mask = None if record.mask_path is None else str(record.mask_path)
            problems.setdefault(record.class_name, []).append({"image": str(record.path), "mask": mask})
    return problems


def _overlay_choice(dataset: AnomalyDataset, per_class: int) -> set[str]:
    """Paths of up to ``per_class`` images per class, half normal and half anomalous, evenly spread."""
    chosen: set[str] = set()
    if per_class <= 0:
        return chosen
    for class_name in dataset.classes:
        normal = [str(r.path) for r in dataset.records if r.class_name == class_name and r.label == 0]
        anomalous = [str(r.path) for r in dataset.records if r.class_name == class_name and r.label == 1]
        n_normal = min(len(normal), per_class // 2)
        n_anomalous = min(len(anomalous), per_class - n_normal)
        n_normal = min(len(normal), per_class - n_anomalous)
        for paths, count in ((normal, n_normal), (anomalous, n_anomalous)):
            if count:
                picks = np.unique(np.linspace(0, len(paths) - 1, count).round().astype(int))
                chosen.update(paths[i] for i in picks)
    return chosen


def _to_rgb(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the normalisation of one ``(3, S, S)`` image; returns ``(S, S, 3)`` uint8."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    rgb = (image.float().cpu() * std_t + mean_t).clamp(0, 1) * 255
    return rgb.round().to(torch.uint8).permute(1, 2, 0).numpy()


def _feed(
    tallies: dict[str, _ClassTally],
    batch: dict[str, Any],
    maps: np.ndarray,
    scores: np.ndarray,
    overlay_paths: set[str],
    dataset: AnomalyDataset,
) -> None:
    """Add one batch to its classes' tallies.

    Args:
        tallies: class name -> tally, updated in place.
        batch: the collated samples (``mask`` ``(B, S, S)``, ``label``, ``has_mask``, ``class_name``, ``path``).
        maps: ``(B, S, S)`` smoothed maps.
        scores: ``(B,)`` image scores.
        overlay_paths: images to keep for overlays.
        dataset: the data set (its mean and std undo the normalisation for overlays).
    """
    masks = batch["mask"].numpy() > 0.5
    has_mask = batch["has_mask"].numpy().astype(bool)
    labels = batch["label"].numpy().astype(int)
    names = np.array(batch["class_name"])
    for class_name in dict.fromkeys(batch["class_name"]):
        rows = names == class_name
        tally = tallies[class_name]
        tally.scores.extend(scores[rows].tolist())
        tally.labels.extend(labels[rows].tolist())
        tally.paths.extend(path for path, keep in zip(batch["path"], rows) if keep)
        for i in np.flatnonzero(rows & has_mask):
            top, left, height, width = (int(v) for v in batch["valid"][i])
            shown = (slice(top, top + height), slice(left, left + width))  # letterbox padding is not scored
            tally.pixels.update(maps[i][shown][None], masks[i][shown][None])
            tally.pixel_images += 1
            tally.anomalous_pixels += int(masks[i][shown].sum())
            tally.normal_pixels += int((~masks[i][shown]).sum())
    for i, path in enumerate(batch["path"]):
        if path in overlay_paths:
            rgb = _to_rgb(batch["image"][i], dataset.mean, dataset.std)
            mask = masks[i].copy() if has_mask[i] else None
            tallies[names[i]].overlays.append(OverlaySample(path, int(labels[i]), rgb, maps[i].copy(), mask))


def _run(
    model: VisualAD,
    dataset: AnomalyDataset,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    overlay_paths: set[str],
    cohort: CohortSettings | None = None,
) -> dict[str, _ClassTally]:
    """Run the model over the data set, feeding each class's metrics batch by batch (or, with ``cohort``,
    once every image of the set has been seen, :func:`_score_cohort`)."""
    tallies = {name: _ClassTally() for name in dataset.classes}
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_skip_invalid
    )
    model.to(device).eval()
    if cohort is not None:
        return _score_cohort(model, dataset, loader, device, tallies, overlay_paths, cohort)
    with tqdm(total=len(dataset), desc="evaluate", unit="img") as bar:
        for batch in loader:
            bar.update(min(batch_size, len(dataset) - bar.n))
            if batch is None:
                continue
            with torch.inference_mode(), autocast(device):
                outputs = model(batch["image"].to(device))
            maps = outputs["map"].float().cpu().numpy()
            _feed(tallies, batch, maps, outputs["score"].float().cpu().numpy(), overlay_paths, dataset)
    return tallies


def _score_cohort(
    model: VisualAD,
    dataset: AnomalyDataset,
    loader: DataLoader,
    device: torch.device,
    tallies: dict[str, _ClassTally],
    overlay_paths: set[str],
    cohort: CohortSettings,
) -> dict[str, _ClassTally]:
    """Cohort scoring: the model over the whole set first, then each class's images scored against each other
    (or against the reference bank).

    Holds the evaluated set (images, head patch scores and patch features in half precision) in memory.
    """
    layers = cohort.feature_layers(model)
    batches, head_scores, features = [], [], []
    for batch in tqdm(loader, desc="features", unit="batch"):
        if batch is None:
            continue
        with torch.inference_mode(), autocast(device):
            outputs = model(batch["image"].to(device), feature_layers=layers)
        batches.append(batch)
        head_scores.append(head_patch_scores(outputs).cpu())
        features.append(stack_features(outputs["features"]).cpu())
    if not batches:
        return tallies
    head, stacked = torch.cat(head_scores), torch.cat(features)
    classes = np.array([name for b in batches for name in b["class_name"]])
    fused = torch.empty_like(head)
    for class_name in dataset.classes:
        rows = torch.from_numpy(np.flatnonzero(classes == class_name))
        if rows.numel():
            compared = _compared(stacked[rows], cohort, model, dataset.resize)
            fused[rows] = fuse_patch_scores(cohort.scoring, head[rows], compared)
    start = 0
    for batch in batches:
        count = len(batch["path"])
        maps = patch_maps(model, fused[start:start + count], batch["image"])
        _feed(tallies, batch, maps.numpy(), top_fraction_mean(maps).numpy(), overlay_paths, dataset)
        start += count
    return tallies


def _compared(features: torch.Tensor, cohort: CohortSettings, model: VisualAD, resize: str) -> torch.Tensor:
    """``(M, N)`` patch scores of one class against the reference bank, or against the class's other images."""
    if cohort.bank is not None:
        cohort.bank.check_fits(model, cohort.feature_layers(model), resize)
        return cohort.bank.scores(features)
    return cohort_scores(features, nearest_candidates(features, cohort.neighbours), cohort.fraction)


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
    return {"head": None, "head_sha256": "untrained" if fresh else "unknown (head file not given)"}


def _environment(device: torch.device) -> dict[str, str]:
    """Versions and device, for provenance."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def evaluate(
    model: VisualAD,
    data: AnomalyDataset | str | Path,
    layout: str | None,
    out_dir: str | Path,
    *,
    split: str = "test",
    classes: Iterable[str] | None = None,
    batch_size: int = 8,
    overlays: int = 8,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    head: str | Path | None = None,
    command: Sequence[str] | None = None,
    extra_timings: Mapping[str, float] | None = None,
    cohort: CohortSettings | None = None,
    resize: str = DEFAULT_RESIZE,
) -> dict[str, Any]:
    """Evaluate the model zero-shot on a labelled 2D data set and write the results.

    Metrics follow the protocol in the module docstring: maps at the model's
    resolution ``S x S`` against masks resized to ``S x S``. Anomalous images
    whose mask is missing, unreadable or of another size than the image stay in
    the image metrics, are left out of the pixel metrics and are listed; an
    unreadable image is skipped and counted. A class with a single kind of
    image has undefined image metrics (NaN, with the reason), not an error.

    Writes into ``out_dir``: ``results.json``, ``results.md`` (the per-class
    table in percent), ``scores.csv`` (one row per image), ``curves/<class>_image.png``
    and ``curves/<class>_pixel.png`` (ROC and PR), and
    ``overlays/<class>/{normal,anomalous}_<stem>.png`` (at ``S x S``).

    Args:
        model: the model (its ``config`` gives ``S``, mean and std).
        data: a data set built at the model's image size, or a data root.
        layout: ``mvfa``, ``meta``, ``mvtec`` or ``visa`` for a data root; ignored for a data set.
        out_dir: output folder (created).
        split: split of a data root.
        classes: subset of classes of a data root; all when None.
        batch_size: images per forward pass.
        overlays: overlay PNGs per class, half normal and half anomalous where possible; 0 for none.
        device: ``auto``, ``cpu``, ``cuda`` or a device.
        num_workers: ``DataLoader`` worker processes.
        head: the head file the model was loaded from, recorded with its sha256;
            None records ``untrained`` for a fresh head.
        command: the command line, recorded in ``results.json``.
        extra_timings: further timings in seconds (e.g. ``model_load_s``) to record.
        cohort: score each class's images against each other (:mod:`visualad_med.model.cohort`); ``None``
            scores each image alone with the model.
        resize: how a data root's images reach ``S x S``: ``squash`` or ``pad`` (aspect kept and padded,
            as volume slices are; the padding is left out of the pixel metrics).

    Returns:
        The results as written to ``results.json`` (with NaN where the file has null).

    Raises:
        ValueError: a data root without images (the message names the folder),
            a data set at another image size, a batch size below 1, or no readable image.
    """
    if batch_size < 1 or num_workers < 0 or overlays < 0:
        raise ValueError(
            f"batch_size must be >= 1 and num_workers, overlays >= 0; got {batch_size}, {num_workers}, {overlays}"
        )
    started = time.perf_counter()
    out_dir = Path(out_dir)
    device = resolve_device(device) if isinstance(device, str) else device
    dataset = _load_dataset(model, data, layout, split, classes, resize)
    masked = _classes_with_masks(dataset)
    problems = _mask_problems(dataset, masked)
    if problems:
        logger.warning(
            "%d anomalous image(s) left out of pixel metrics (mask missing, unreadable or of another size): %s",
            sum(len(v) for v in problems.values()),
            ", ".join(p["image"] for rows in problems.values() for p in rows[:5]),
        )
    loaded = time.perf_counter()

    tallies = _run(model, dataset, device, batch_size, num_workers, _overlay_choice(dataset, overlays), cohort)
    if not any(tally.scores for tally in tallies.values()):
        raise ValueError(f"no readable image in {dataset.name}: all {len(dataset)} files failed to load")
    inferred = time.perf_counter()

    rows, curves = {}, {}
    for name in dataset.classes:
        rows[name], curves[name] = _class_result(
            name, dataset, tallies[name], name in masked, problems.get(name, [])
        )
    unreadable = sum(row["counts"]["unreadable"] for row in rows.values())
    if unreadable:
        logger.warning("%d unreadable image(s) skipped", unreadable)
    measured = time.perf_counter()

    out_dir.mkdir(parents=True, exist_ok=True)
    files = _write_curves(rows, curves, out_dir)
    files += write_overlays({name: tally.overlays for name, tally in tallies.items()}, out_dir)
    files.append(write_scores({n: (t.paths, t.labels, t.scores) for n, t in tallies.items()}, out_dir / "scores.csv"))
    evaluated = sum(len(t.scores) for t in tallies.values())
    given_dataset = isinstance(data, AnomalyDataset)
    results = {
        "format": FORMAT,
        "protocol": PROTOCOL,
        "resolution": model.config.image_size,
        "resize": dataset.resize,
        "data": {"root": None if given_dataset else str(data), "name": dataset.name,
                 "layout": None if given_dataset else layout, "split": None if given_dataset else split,
                 "classes": dataset.classes},
        "model": {**_head_identity(model, head), "config": dataclasses.asdict(model.config)},
        "cohort": None if cohort is None else cohort.describe(model),
        "command": None if command is None else list(command),
        "environment": _environment(device),
        "classes": rows,
        "mean": _mean_result(rows),
    }
    finished = time.perf_counter()
    results["timings"] = {
        **(extra_timings or {}),
        "dataset_s": loaded - started,
        "inference_s": inferred - loaded,
        "metrics_s": measured - inferred,
        "plots_s": finished - measured,
        "total_s": finished - started,
        "images_per_s": evaluated / max(inferred - loaded, 1e-9),
    }
    results["files"] = sorted(str(p.relative_to(out_dir)) for p in files) + list(RESULT_FILES)
    write_results(results, out_dir)
    logger.info("evaluated %d images in %.1f s; results in %s", evaluated, finished - started, out_dir)
    return results
