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
from visualad_med.model.torch_model import VisualAD
from visualad_med.io.overlay import heat_overlay, save_png
from visualad_med.model.devices import autocast

logger = logging.getLogger(__name__)


def predict_image(model: VisualAD, rgb: np.ndarray, device: torch.device) -> tuple[np.ndarray, float]:
    """Anomaly map and score of one image.

    Args:
        model: in eval mode, on ``device``.
        rgb: ``(H, W, 3)`` uint8.

    Returns:
        ``(map, score)``: the ``(H, W)`` float32 smoothed map, computed at model
        resolution on the letterboxed image (aspect kept, padded, as volume slices are), cropped
        to the image and resized bilinearly to it; the model's image score.
    """
    config = model.config
    image, (top, left, height, width) = letterbox_image(rgb, config.image_size, config.mean, config.std)
    with torch.inference_mode(), autocast(device):
        outputs = model(image[None].to(device))
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


def predict_files(model: VisualAD, paths: list[Path], out_dir: Path, device: torch.device) -> tuple[int, int]:
    """Write ``<stem>_overlay.png`` and ``<stem>.json`` for every image; returns ``(succeeded, failed)``.

    Stems are :func:`output_stems` (distinct when file names collide). An unreadable image (missing,
    truncated, a decompression bomb, above the memory budget, NaN pixels) is logged with its path and
    reason and skipped.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(device).eval()
    succeeded = failed = 0
    for path, stem in tqdm(list(zip(paths, output_stems(paths))), desc="images", unit="img"):
        try:
            rgb = read_rgb(path)
        except (OSError, ValueError) as error:
            logger.error("%s: cannot read image: %s", path, getattr(error, "reason", error))
            failed += 1
            continue
        anomaly_map, score = predict_image(model, rgb, device)
        record = {
            "image": str(path),
            "score": score,
            "map_max": float(anomaly_map.max()),
            "threshold": model.threshold,
            "anomalous": score > model.threshold,
            "anomalous_fraction": float((anomaly_map > model.threshold).mean()),
            "backbone": model.config.backbone,
            "backbone_sha256": model.config.weights_sha256,
        }
        span = max(abs(model.threshold), float(np.abs(anomaly_map).max()), 1e-6)
        overlay = heat_overlay(rgb, anomaly_map, (model.threshold - span, model.threshold + span))
        save_png(overlay, out_dir / f"{stem}_overlay.png")
        write_json(record, out_dir / f"{stem}.json")
        succeeded += 1
    return succeeded, failed
