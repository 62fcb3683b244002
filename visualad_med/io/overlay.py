"""Heat-map overlays of anomaly maps on images, saved as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import scipy.ndimage
from PIL import Image

from .atomic import atomic_path

COLORMAP = "jet"

_CHUNK_PIXELS = 1 << 20
"""Pixels blended at a time: the colour map's float64 temporaries (about 100 bytes a pixel) stay at ~100 MB."""


def heat_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    value_range: tuple[float, float],
    alpha: float = 0.5,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a colour-mapped map onto an image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        anomaly_map: ``(H, W)`` float map at the image's resolution.
        value_range: ``(low, high)`` mapped to the ends of the colour map.
        alpha: weight of the heat map.
        mask: optional ``(H, W)`` ground truth, drawn as a white outline.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    if anomaly_map.shape != image.shape[:2]:
        raise ValueError(f"map shape {anomaly_map.shape} differs from image shape {image.shape[:2]}")
    out = np.empty(image.shape, dtype=np.uint8)
    rows = max(1, _CHUNK_PIXELS // max(image.shape[1], 1))
    for top in range(0, image.shape[0], rows):
        band = slice(top, top + rows)
        out[band] = _blend(image[band], anomaly_map[band], value_range, alpha)
    if mask is not None:
        edge = mask.astype(bool) & ~scipy.ndimage.binary_erosion(mask.astype(bool))
        out[edge] = 255
    return out


def _blend(image: np.ndarray, anomaly_map: np.ndarray, value_range: tuple[float, float], alpha: float) -> np.ndarray:
    """:func:`heat_overlay` without the outline, on a band of rows (its float64 temporaries stay small)."""
    low, high = value_range
    scaled = np.clip((anomaly_map - low) / max(high - low, 1e-12), 0, 1)
    heat = matplotlib.colormaps[COLORMAP](scaled)[..., :3] * 255
    blended = (1 - alpha) * image.astype(np.float32) + alpha * heat
    return blended.round().astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> Path:
    """Write a uint8 ``(H, W, 3)`` array as PNG atomically."""
    with atomic_path(Path(path)) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")
    return Path(path)
