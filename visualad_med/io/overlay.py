"""Heat-map overlays of anomaly maps on images, saved as PNG.

The colour-mapped map is blended onto the image by MONAI's ``blend_images``, a band of rows at a time
(:data:`_CHUNK_PIXELS`); the mask outline, which ``blend_images`` does not draw, is drawn on top.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.ndimage
from monai.visualize import blend_images
from PIL import Image

from .atomic import atomic_path

COLORMAP = "jet"

_CHUNK_PIXELS = 1 << 20
"""Pixels blended at a time: the temporaries of ``blend_images`` (about 72 bytes a pixel) stay at ~75 MB."""


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
    """:func:`heat_overlay` without the outline, on a band of rows: ``(h, W, 3)`` uint8 RGB."""
    low, high = value_range
    scaled = np.clip((anomaly_map - low) / max(high - low, 1e-12), 0, 1)
    channels_first = np.moveaxis(image, -1, 0).astype(np.float32) / 255
    blended = blend_images(channels_first, scaled[None], alpha=alpha, cmap=COLORMAP, rescale_arrays=False,
                           transparent_background=False)
    return (np.moveaxis(blended, 0, -1) * 255).round().astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> Path:
    """Write a uint8 ``(H, W, 3)`` array as PNG atomically."""
    with atomic_path(Path(path)) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")
    return Path(path)
