"""Heat overlays: MONAI's ``blend_images`` in bands of rows, within one grey level of the plain blend."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from visualad_med.io import overlay
from visualad_med.io.overlay import heat_overlay


def plain_blend(image: np.ndarray, anomaly_map: np.ndarray, value_range: tuple[float, float],
                alpha: float) -> np.ndarray:
    """``(1 - alpha) * image + alpha * 255 * jet(map scaled to value_range)``, rounded to uint8."""
    low, high = value_range
    heat = matplotlib.colormaps["jet"](np.clip((anomaly_map - low) / (high - low), 0, 1))[..., :3] * 255
    return ((1 - alpha) * image + alpha * heat).round().astype(np.uint8)


def picture(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A random uint8 RGB image and a float32 map of ``shape``."""
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (*shape, 3), dtype=np.uint8), rng.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_overlay_is_within_one_level_of_the_plain_blend(alpha):
    image, anomaly_map = picture((120, 90))
    drawn = heat_overlay(image, anomaly_map, (-2.0, 2.0), alpha=alpha)
    difference = np.abs(drawn.astype(int) - plain_blend(image, anomaly_map, (-2.0, 2.0), alpha))
    assert drawn.dtype == np.uint8 and drawn.shape == image.shape
    assert difference.max() <= 1 and (difference > 0).mean() < 0.1  # float32 rounding, ties at x.5


def test_bands_of_rows_draw_the_same_picture(monkeypatch):
    image, anomaly_map = picture((50, 40))
    whole = heat_overlay(image, anomaly_map, (-1.0, 1.0))
    monkeypatch.setattr(overlay, "_CHUNK_PIXELS", 7 * 40 + 3)  # bands of 7 rows, the last one of 1
    np.testing.assert_array_equal(heat_overlay(image, anomaly_map, (-1.0, 1.0)), whole)


def test_mask_outline_is_white_and_the_inside_is_blended():
    image, anomaly_map = picture((20, 20))
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    drawn = heat_overlay(image, anomaly_map, (-1.0, 1.0), mask=mask)
    outline = mask.copy()
    outline[6:14, 6:14] = False
    assert (drawn[outline] == 255).all()
    np.testing.assert_array_equal(drawn[~outline], heat_overlay(image, anomaly_map, (-1.0, 1.0))[~outline])
