"""The model over a labelled 2D data set, batch by batch into per-class tallies (scores, pixel metrics, overlays).

Each image is scored alone by the model, or, with cohort settings, every image of a class is
scored against the others of its class (or against the reference bank) once the whole set has
been seen. Maps are streamed: each batch feeds its class's
:class:`~visualad_med.evaluation.pixel_metrics.PixelMetricAccumulator` and is dropped; only image
scores and a few overlay samples per class are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from visualad_med.datasets import AnomalyDataset, collate_skip_invalid
from visualad_med.model.cohort import CohortSettings, fuse_patch_scores, head_patch_scores, image_cohort_scores
from visualad_med.model.cohort import patch_maps
from visualad_med.model.map_settings import MapSettings
from .pixel_metrics import PixelMetricAccumulator
from visualad_med.model.torch_model import VisualAD, top_fraction_mean
from visualad_med.model.mutual import global_descriptors, rescore_neighbourhood, stack_features
from .report import OverlaySample
from visualad_med.model.devices import autocast


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
    map_settings: MapSettings,
    cohort: CohortSettings | None = None,
) -> dict[str, _ClassTally]:
    """Run the model over the data set with the run's ``map_settings``, feeding each class's metrics batch by
    batch (or, with ``cohort``, once every image of the set has been seen, :func:`_score_cohort`)."""
    tallies = {name: _ClassTally() for name in dataset.classes}
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_skip_invalid
    )
    model.to(device).eval()
    if cohort is not None:
        return _score_cohort(model, dataset, loader, device, tallies, overlay_paths, cohort, map_settings.map_reference)
    with tqdm(total=len(dataset), desc="evaluate", unit="img") as bar:
        for batch in loader:
            bar.update(min(batch_size, len(dataset) - bar.n))
            if batch is None:
                continue
            with torch.inference_mode(), autocast(device):
                outputs = model(batch["image"].to(device), settings=map_settings)
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
    map_reference: str,
) -> dict[str, _ClassTally]:
    """Cohort scoring: the model over the whole set first, then each class's images scored against each other
    (or against the reference bank); maps referenced as ``map_reference`` (the run's) says.

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
            compared = image_cohort_scores(stacked[rows], cohort, model, dataset.resize)
            fused[rows] = fuse_patch_scores(cohort.scoring, head[rows], compared)
    rescored = (_rescored(model, fused, stacked, classes, batches, dataset.classes, cohort, map_reference)
                if cohort.rescore else None)
    start = 0
    for batch in batches:
        count = len(batch["path"])
        maps = patch_maps(model, fused[start:start + count], batch["image"], map_reference)
        scores = top_fraction_mean(maps) if rescored is None else rescored[start:start + count]
        _feed(tallies, batch, maps.numpy(), scores.numpy(), overlay_paths, dataset)
        start += count
    return tallies


def _rescored(model: VisualAD, fused: torch.Tensor, features: torch.Tensor, classes: np.ndarray, batches: list,
              class_names: list[str], cohort: CohortSettings, map_reference: str) -> torch.Tensor:
    """``(M,)`` image scores of the whole set re-scored per class over look-alike images
    (:func:`~visualad_med.model.mutual.rescore_neighbourhood`); needs every image's score first."""
    scores = torch.cat([top_fraction_mean(patch_maps(model, rows, batch["image"], map_reference))
                        for rows, batch in zip(fused.split([len(b["path"]) for b in batches]), batches)])
    descriptors = global_descriptors(features)
    for class_name in class_names:
        rows = torch.from_numpy(np.flatnonzero(classes == class_name))
        if rows.numel():
            scores[rows] = rescore_neighbourhood(scores[rows], descriptors[rows], cohort.rescore)
    return scores
