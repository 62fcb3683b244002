"""The decision threshold shipped in a head: F1-max over the training set's pixels.

Users get a binary mask without calibrating on their own (medical) data; the
threshold is calibrated on industrial data and says so in the README. Pixels
are counted in fine histograms (bounded memory for any data size); the chosen
threshold is a bin edge, within ``range / bins`` of the exact F1-max threshold.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from visualad_med.datasets import collate_skip_invalid
from visualad_med.model.torch_model import VisualAD
from visualad_med.model.devices import autocast

logger = logging.getLogger(__name__)

BINS = 8192


def f1_max_threshold(positive: np.ndarray, negative: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """Threshold maximising F1 for the rule ``value >= threshold``, from per-bin counts.

    Args:
        positive: ``(bins,)`` counts of anomalous pixels per bin.
        negative: ``(bins,)`` counts of normal pixels per bin.
        edges: ``(bins + 1,)`` bin edges.

    Returns:
        ``(threshold, f1)``; threshold is the lower edge of the best bin.
    """
    true_positive = np.cumsum(positive[::-1])[::-1].astype(np.float64)
    predicted = true_positive + np.cumsum(negative[::-1])[::-1]
    total_positive = positive.sum()
    f1 = np.where(predicted + total_positive > 0, 2 * true_positive / np.maximum(predicted + total_positive, 1), 0)
    best = int(np.argmax(f1))
    return float(edges[best]), float(f1[best])


def calibrate_threshold(
    model: VisualAD,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 8,
    max_images: int | None = None,
    precision: str = "auto",
) -> float:
    """F1-max pixel threshold of ``model``'s smoothed map over ``dataset`` (images with masks).

    The map's bound under the model's scoring fixes the histogram range. With
    ``max_images``, a seeded random subset is used (data sets are sorted by
    path, so their first images are often all of one kind).
    """
    bound = model.map_bound()
    edges = np.linspace(-bound, bound, BINS + 1)
    positive = np.zeros(BINS, dtype=np.int64)
    negative = np.zeros(BINS, dtype=np.int64)
    if max_images is not None and max_images < len(dataset):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max_images]
        dataset = Subset(dataset, order.tolist())
    loader = DataLoader(dataset, batch_size, shuffle=False, collate_fn=collate_skip_invalid)
    seen = 0
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc="calibrating threshold", unit="batch"):
            if batch is None:
                continue
            keep = batch["has_mask"].bool()
            if not keep.any():
                continue
            with autocast(device, precision):
                maps = model(batch["image"][keep].to(device))["map"].float().cpu().numpy()
            masks = batch["mask"][keep].numpy() > 0.5
            positive += np.histogram(maps[masks], edges)[0]
            negative += np.histogram(maps[~masks], edges)[0]
            seen += int(keep.sum())
    if positive.sum() == 0:
        logger.warning("no anomalous pixel in the calibration set: threshold left at 0")
        return 0.0
    threshold, f1 = f1_max_threshold(positive, negative, edges)
    logger.info("calibrated threshold %.4f (pixel F1-max %.3f over %d images)", threshold, f1, seen)
    return threshold
