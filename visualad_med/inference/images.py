"""2D prediction: images in, heat-map overlay PNGs and JSON scores out."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from visualad_med.io.images import letterbox_image, read_rgb
from visualad_med.io.writers import write_json
from visualad_med.model.cohort import COHORT_THRESHOLD, CohortSettings, fuse_patch_scores, head_patch_scores
from visualad_med.model.cohort import image_cohort_scores, patch_maps
from visualad_med.model.map_settings import MapSettings
from visualad_med.model.mutual import stack_features
from visualad_med.model.torch_model import VisualAD, top_fraction_mean
from visualad_med.io.overlay import heat_overlay, save_png
from visualad_med.model.devices import autocast

logger = logging.getLogger(__name__)


def predict_image(model: VisualAD, rgb: np.ndarray, device: torch.device,
                  map_settings: MapSettings | None = None) -> tuple[np.ndarray, float]:
    """Anomaly map and score of one image.

    Args:
        model: in eval mode, on ``device``.
        rgb: ``(H, W, 3)`` uint8.
        device: where the model runs.
        map_settings: the run's map settings; default the model's own.

    Returns:
        ``(map, score)``: the ``(H, W)`` float32 smoothed map, computed at model
        resolution on the letterboxed image (aspect kept, padded, as volume slices are), cropped
        to the image and resized bilinearly to it; the model's image score.
    """
    config = model.config
    image, (top, left, height, width) = letterbox_image(rgb, config.image_size, config.mean, config.std)
    with torch.inference_mode(), autocast(device):
        outputs = model(image[None].to(device), settings=map_settings)
    shown = outputs["map"].float()[:, top:top + height, left:left + width]
    resized = F.interpolate(shown[:, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)
    return resized[0, 0].cpu().numpy(), float(outputs["score"][0])


def output_stems(paths: list[Path]) -> list[str]:
    """Output file stems, one per path: the file stem, or where stems collide the parent folders too.

    ``a/000.png`` and ``b/000.png`` become ``a_000`` and ``b_000``; more parents are added until the
    names differ (case-insensitively), and the same path given twice gets a ``_2``, ``_3``, ... suffix.
    """
    stems = [_stem(path, 0) for path in paths]
    for depth in range(1, max((len(p.parts) for p in paths), default=0)):
        counts = Counter(stem.lower() for stem in stems)
        if all(counts[stem.lower()] == 1 for stem in stems):
            return stems
        stems = [_stem(path, depth) if counts[stem.lower()] > 1 else stem for path, stem in zip(paths, stems)]
    seen: Counter[str] = Counter()
    unique = []
    for stem in stems:
        seen[stem.lower()] += 1
        unique.append(stem if seen[stem.lower()] == 1 else f"{stem}_{seen[stem.lower()]}")
    return unique


def _stem(path: Path, parents: int) -> str:
    """``path``'s stem preceded by its last ``parents`` folder names, joined by ``_``."""
    folders = path.absolute().parent.parts[1:]  # without the root
    return "_".join([*(folders[-parents:] if parents else ()), path.stem])


def predict_files(model: VisualAD, paths: list[Path], out_dir: Path, device: torch.device,
                  cohort: CohortSettings | None = None, map_settings: MapSettings | None = None) -> tuple[int, int]:
    """Write ``<stem>_overlay.png`` and ``<stem>.json`` for every image; returns ``(succeeded, failed)``.

    Stems are :func:`output_stems` (distinct when file names collide). An unreadable image (missing,
    truncated, a decompression bomb, above the memory budget, NaN pixels) is logged with its path and
    reason and skipped. With ``cohort`` the images are one kind (one cohort): each is scored against the
    others (or a reference bank) and fused with the head as ``cohort.scoring`` says
    (:func:`predict_cohort`); fewer than two readable images without a bank are scored by the head alone.
    ``map_settings`` are the run's (scoring, map reference); default the model's own.
    """
    map_settings = map_settings or model.settings
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(device).eval()
    named = list(zip(paths, output_stems(paths)))
    failed: list[Path] = []
    if cohort is not None:
        readable = [(path, stem) for path, stem, _ in _read(named, failed)]
        if len(readable) >= 2 or cohort.bank is not None:
            predicted = predict_cohort(model, readable, device, cohort, map_settings.map_reference)
            threshold = COHORT_THRESHOLD
        else:
            logger.warning("%d readable image(s): a cohort needs two or more; scored by the head alone",
                           len(readable))
            cohort, named = None, readable
    if cohort is None:
        predicted = ((path, stem, rgb, *predict_image(model, rgb, device, map_settings))
                     for path, stem, rgb in _read(tqdm(named, desc="images", unit="img"), failed))
        threshold = model.threshold
    succeeded = 0
    for path, stem, rgb, anomaly_map, score in predicted:
        record = {
            "image": str(path),
            "score": score,
            "map_max": float(anomaly_map.max()),
            "threshold": threshold,
            "anomalous": score > threshold,
            "anomalous_fraction": float((anomaly_map > threshold).mean()),
            "scoring": map_settings.scoring if cohort is None else cohort.scoring,
            "cohort": None if cohort is None else {**cohort.describe(model), "images": len(readable)},
            "backbone": model.config.backbone,
            "backbone_sha256": model.config.weights_sha256,
        }
        span = max(abs(threshold), float(np.abs(anomaly_map).max()), 1e-6)
        overlay = heat_overlay(rgb, anomaly_map, (threshold - span, threshold + span))
        save_png(overlay, out_dir / f"{stem}_overlay.png")
        write_json(record, out_dir / f"{stem}.json")
        succeeded += 1
    return succeeded, len(failed)


def _read(named, failed: list[Path]):
    """Yield ``(path, stem, rgb)`` of each readable ``(path, stem)``; the others are logged and added to ``failed``."""
    for path, stem in named:
        try:
            rgb = read_rgb(path)
        except (OSError, ValueError) as error:
            logger.error("%s: cannot read image: %s", path, getattr(error, "reason", error))
            failed.append(path)
            continue
        yield path, stem, rgb


def predict_cohort(model: VisualAD, images: list[tuple[Path, str]], device: torch.device,
                   cohort: CohortSettings, map_reference: str, batch_size: int = 16):
    """Yield ``(path, stem, rgb, map, score)`` of ``(path, output stem)`` images scored as one cohort.

    Images are read twice (to extract, then to draw), so only one batch of pixels is held. Every image goes through the model once (its head patch scores and the compared blocks' features, half
    precision, are kept: about 0.6 MB an image for ViT-S/14 at 224 px); the patch scores against the
    other images (:func:`~visualad_med.model.cohort.image_cohort_scores`) are fused with the head's on the
    cohort's robust scale, so the map is in robust sd and :data:`~visualad_med.model.cohort.COHORT_THRESHOLD`
    is its threshold. Maps are made at model resolution, cropped to the image and resized to it, as
    :func:`predict_image` does, referenced as ``map_reference`` (the run's) says.
    """
    config, layers = model.config, cohort.feature_layers(model)
    head, features, boxes = [], [], []
    for start in tqdm(range(0, len(images), batch_size), desc="features", unit="batch"):
        squares = [letterbox_image(read_rgb(path), config.image_size, config.mean, config.std)
                   for path, _ in images[start:start + batch_size]]
        with torch.inference_mode(), autocast(device):
            outputs = model(torch.stack([square for square, _ in squares]).to(device), feature_layers=layers)
        head.append(head_patch_scores(outputs).cpu())
        features.append(stack_features(outputs["features"]).cpu())
        boxes.extend(box for _, box in squares)
    head_scores = torch.cat(head)
    fused = fuse_patch_scores(cohort.scoring, head_scores,
                              image_cohort_scores(torch.cat(features), cohort, model, "pad"))
    for index, (path, stem) in enumerate(tqdm(images, desc="maps", unit="img")):
        rgb = read_rgb(path)
        square, (top, left, height, width) = letterbox_image(rgb, config.image_size, config.mean, config.std)
        with torch.inference_mode():
            maps = patch_maps(model, fused[index:index + 1], square[None], map_reference)
        shown = maps[:, top:top + height, left:left + width]
        resized = F.interpolate(shown[:, None].float(), size=rgb.shape[:2], mode="bilinear", align_corners=False)
        yield path, stem, rgb, resized[0, 0].numpy(), float(top_fraction_mean(maps)[0])
