"""Zero-shot evaluation: the model over a labelled 2D data set, metrics per class, results on disk.

Protocol, as in the zero-shot anomaly detection literature (MVFA, AnomalyCLIP,
VisualAD): each image is resized to the model's input side ``S`` and the
smoothed map ``map`` ``(S, S)`` is compared with the ground-truth mask resized
to ``S x S`` (bilinear, binarised at 0.5); the image score is the model's
``score`` (mean of the top 1 % of ``map``). Metrics (:mod:`visualad_med.evaluation.metrics`)
are computed class by class: image AUROC, AP and F1-max; pixel AUROC, AP,
F1-max and AUPRO (regions per 2D image, FPR limit 0.3) over the images that have
a mask. The Mean row averages each metric over the classes where it is defined.

Maps are streamed (:mod:`visualad_med.evaluation.image_scoring`): each batch feeds its class's
:class:`~visualad_med.evaluation.pixel_metrics.PixelMetricAccumulator` and is dropped; only image
scores and a few overlay samples per class are kept. The results are assembled by
:mod:`visualad_med.evaluation.results`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visualad_med.datasets import AnomalyDataset, build_dataset
from visualad_med.errors import SettingError
from visualad_med.model.cohort import CohortSettings
from visualad_med.model.map_settings import MapSettings
from .image_scoring import _ClassTally, _run
from .metrics import CurvePoints
from visualad_med.model.torch_model import VisualAD
from .report import RESULT_FILES, write_overlays, write_results, write_scores
from .results import _class_rows, _environment, _head_identity, _mean_result, _write_curves
from visualad_med.model.devices import resolve_device

logger = logging.getLogger(__name__)

FORMAT = "visualad_med.evaluation/1"
DEFAULT_RESIZE = "pad"
"""How evaluated images reach the model's square input: as volume slices do (aspect kept, padded), so the
numbers are made the way the product runs; see :data:`~visualad_med.io.images.RESIZE_POLICIES`."""
PROTOCOL = (
    "images letterboxed into S x S as volume slices are (longest side to S, padded; or squashed with --resize "
    "squash); maps at S x S against masks placed the same way (bilinear, binarised at 0.5), padding not scored; "
    "image score = mean of the top 1% of the smoothed map; AUPRO regions per 2D image (8-connected), FPR limit 0.3; "
    "Mean = mean over classes of each metric where it is defined"
)


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
    """Per class, the anomalous images of a masked class left out of pixel metrics (mask missing, unusable); logged."""
    problems: dict[str, list[dict[str, str | None]]] = {}
    for record in dataset.records:
        if record.label == 1 and not record.has_mask and record.class_name in masked:
            mask = None if record.mask_path is None else str(record.mask_path)
            problems.setdefault(record.class_name, []).append({"image": str(record.path), "mask": mask})
    if problems:
        logger.warning(
            "%d anomalous image(s) left out of pixel metrics (mask missing, unreadable or of another size): %s",
            sum(len(v) for v in problems.values()),
            ", ".join(p["image"] for rows in problems.values() for p in rows[:5]),
        )
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


def _write_files(
    rows: Mapping[str, Mapping[str, Any]],
    curves: Mapping[str, Mapping[str, CurvePoints | None]],
    tallies: Mapping[str, _ClassTally],
    out_dir: Path,
) -> list[Path]:
    """Curves, overlays and ``scores.csv`` into ``out_dir`` (created); returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _write_curves(rows, curves, out_dir)
    files += write_overlays({name: tally.overlays for name, tally in tallies.items()}, out_dir)
    files.append(write_scores({n: (t.paths, t.labels, t.scores) for n, t in tallies.items()}, out_dir / "scores.csv"))
    return files


def _run_record(
    model: VisualAD,
    data: AnomalyDataset | str | Path,
    layout: str | None,
    split: str,
    dataset: AnomalyDataset,
    head: str | Path | None,
    cohort: CohortSettings | None,
    command: Sequence[str] | None,
    device: torch.device,
    map_settings: MapSettings,
) -> dict[str, Any]:
    """What ``results.json`` records before the classes: format, protocol, data, model (its config with the run's
    scoring and map reference), cohort, command, environment."""
    chosen = {"scoring": map_settings.scoring, "selfsim_weight": map_settings.selfsim_weight,
              "map_reference": map_settings.map_reference}
    given_dataset = isinstance(data, AnomalyDataset)
    return {
        "format": FORMAT,
        "protocol": PROTOCOL,
        "resolution": model.config.image_size,
        "resize": dataset.resize,
        "data": {"root": None if given_dataset else str(data), "name": dataset.name,
                 "layout": None if given_dataset else layout, "split": None if given_dataset else split,
                 "classes": dataset.classes},
        "model": {**_head_identity(model, head), "config": {**dataclasses.asdict(model.config), **chosen}},
        "cohort": None if cohort is None else cohort.describe(model),
        "command": None if command is None else list(command),
        "environment": _environment(device),
    }


def _timings(
    extra: Mapping[str, float] | None, started: float, loaded: float, inferred: float, measured: float,
    finished: float, evaluated: int,
) -> dict[str, float]:
    """Seconds of each stage from ``time.perf_counter`` marks, plus ``extra``, and the images per second."""
    return {
        **(extra or {}),
        "dataset_s": loaded - started,
        "inference_s": inferred - loaded,
        "metrics_s": measured - inferred,
        "plots_s": finished - measured,
        "total_s": finished - started,
        "images_per_s": evaluated / max(inferred - loaded, 1e-9),
    }


def evaluate(
    model: VisualAD, data: AnomalyDataset | str | Path, layout: str | None, out_dir: str | Path, *,
    split: str = "test", classes: Iterable[str] | None = None, batch_size: int = 8, overlays: int = 8,
    device: str | torch.device = "auto", num_workers: int = 0, head: str | Path | None = None,
    command: Sequence[str] | None = None, extra_timings: Mapping[str, float] | None = None,
    cohort: CohortSettings | None = None, resize: str = DEFAULT_RESIZE, map_settings: MapSettings | None = None,
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
        map_settings: the run's scoring and map reference (``model.settings.for_run(...)``); default the
            model's own.

    Returns:
        The results as written to ``results.json`` (with NaN where the file has null).

    Raises:
        ValueError: a data root without images (the message names the folder),
            a data set at another image size, a batch size below 1, or no readable image.
    """
    if batch_size < 1 or num_workers < 0 or overlays < 0:
        raise SettingError("batch_size", f"batch_size must be >= 1 and num_workers, overlays >= 0; got {batch_size}, "
                           f"{num_workers}, {overlays}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    device = resolve_device(device) if isinstance(device, str) else device
    dataset = _load_dataset(model, data, layout, split, classes, resize)
    masked = _classes_with_masks(dataset)
    problems = _mask_problems(dataset, masked)
    loaded = time.perf_counter()

    map_settings = map_settings or model.settings
    tallies = _run(model, dataset, device, batch_size, num_workers, _overlay_choice(dataset, overlays), map_settings,
                   cohort)
    if not any(tally.scores for tally in tallies.values()):
        raise ValueError(f"no readable image in {dataset.name}: all {len(dataset)} files failed to load")
    inferred = time.perf_counter()

    rows, curves = _class_rows(dataset, tallies, masked, problems)
    measured = time.perf_counter()

    files = _write_files(rows, curves, tallies, out_dir)
    evaluated = sum(len(t.scores) for t in tallies.values())
    results = {**_run_record(model, data, layout, split, dataset, head, cohort, command, device, map_settings),
               "classes": rows, "mean": _mean_result(rows)}
    finished = time.perf_counter()
    results["timings"] = _timings(extra_timings, started, loaded, inferred, measured, finished, evaluated)
    results["files"] = sorted(str(p.relative_to(out_dir)) for p in files) + list(RESULT_FILES)
    write_results(results, out_dir)
    logger.info("evaluated %d images in %.1f s; results in %s", evaluated, finished - started, out_dir)
    return results
