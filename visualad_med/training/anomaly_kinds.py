"""The synthetic anomaly kinds, each drawn on one normal ``uint8`` RGB image with its exact mask.

Each kind is drawn at the image's own resolution. Four are the industrial kinds:

* ``perlin`` (DRAEM, Zavrtanik et al., ICCV 2021): the region where Perlin noise
  exceeds a threshold is filled with a foreign texture blended with a random
  opacity in ``[0.15, 1]``;
* ``cutpaste`` (CutPaste, Li et al., CVPR 2021): a rectangle of the same image,
  with a small brightness/contrast jitter, pasted elsewhere;
* ``scar`` (CutPaste-scar): a thin rotated rectangle filled with a random colour
  or with the same image shifted;
* ``patchswap``: a rectangle taken from another normal image.

Four are lesion-like: one compact blob (a Gaussian envelope roughened by low-frequency Perlin
noise, 0.5-8 % of the image) whose soft edge blends the change in over a ramp of the blob's
own profile, the way a tumour or a bleed fades into tissue:

* ``blob``: brighter or darker than its surroundings (by 20-90 grey levels);
* ``texture``: a foreign texture (a natural photo) seen through the blob;
* ``blur``: the surroundings smoothed (Gaussian, sigma 1.5-5 % of the image side);
* ``contrast``: local contrast scaled about the local mean by a factor in ``[0.2, 0.6]`` or ``[1.6, 3]``.

The mask is exactly the set of changed pixels: every pixel outside it is
byte-identical to the source and every pixel inside differs. Where a fill
happens to equal the source (same-image patches on flat texture), the pixel is
moved by one grey level (+1, or -1 at 255) so the region stays solid. A draw
is redrawn unless at least ``min_area`` of the image changes visibly (by
``VISIBLE_LEVELS`` grey levels or more in some channel; this rejects, e.g., a
patch of black background pasted on black background); after ``attempts``
draws a random rectangle is inverted (``255 - x``).
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image
from scipy import ndimage

logger = logging.getLogger(__name__)

INDUSTRIAL_KINDS: tuple[str, ...] = ("perlin", "cutpaste", "scar", "patchswap")
LESION_KINDS: tuple[str, ...] = ("blob", "texture", "blur", "contrast")
SYNTHETIC_KINDS: tuple[str, ...] = INDUSTRIAL_KINDS + LESION_KINDS
KIND_GROUPS: dict[str, tuple[str, ...]] = {"industrial": INDUSTRIAL_KINDS, "lesion": LESION_KINDS, "all": SYNTHETIC_KINDS}
"""Names that stand for several kinds in ``--synthetic``."""
TEXTURE_KINDS: tuple[str, ...] = ("perlin", "texture")
"""Kinds that see a texture through their region (a ``--synthetic-source`` image when given)."""

VISIBLE_LEVELS = 4
"""Smallest change (grey levels, any channel) counted as visible when checking ``min_area``."""


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2D gradient (Perlin) noise.

    Args:
        shape: output ``(H, W)``.
        res: number of noise cells along ``(H, W)``.
        rng: random generator for the gradient directions.

    Returns:
        ``float64`` array ``(H, W)`` with values in about ``[-1, 1]``.
    """
    (height, width), (ry, rx) = shape, res
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(ry + 1, rx + 1))
    grad_y, grad_x = np.sin(angles), np.cos(angles)
    y, x = np.arange(height) * (ry / height), np.arange(width) * (rx / width)
    iy, ix = y.astype(int)[:, None], x.astype(int)[None, :]
    fy, fx = y[:, None] - iy, x[None, :] - ix

    def corner(dy: int, dx: int) -> np.ndarray:
        return grad_y[iy + dy, ix + dx] * (fy - dy) + grad_x[iy + dy, ix + dx] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)

    u, v = fade(fx), fade(fy)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return np.sqrt(2.0) * (top * (1 - v) + bottom * v)


def _fit(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a ``uint8`` RGB image to ``shape`` ``(H, W)`` (bicubic) unless it already has it."""
    if image.shape[:2] == shape:
        return image
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.Resampling.BICUBIC))


def _box(shape: tuple[int, int], rng: np.random.Generator, area: tuple[float, float]) -> tuple[int, int]:
    """Height and width of a random rectangle covering a fraction ``area`` of the image."""
    height, width = shape
    size = rng.uniform(*area) * height * width
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
    box_h = int(np.clip(round(np.sqrt(size * aspect)), 1, height))
    box_w = int(np.clip(round(np.sqrt(size / aspect)), 1, width))
    return box_h, box_w


def _corner(shape: tuple[int, int], box: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(0, shape[0] - box[0] + 1)), int(rng.integers(0, shape[1] - box[1] + 1))


def _rectangle_region(shape: tuple[int, int], rng: np.random.Generator, area: tuple[float, float]) -> np.ndarray:
    box = _box(shape, rng, area)
    top, left = _corner(shape, box, rng)
    region = np.zeros(shape, dtype=bool)
    region[top : top + box[0], left : left + box[1]] = True
    return region


def _composite(image: np.ndarray, region: np.ndarray, fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copy ``fill`` into ``image`` on ``region``, changing every region pixel; the mask is ``region``."""
    out = image.copy()
    out[region] = fill[region]
    unchanged = region & (out == image).all(axis=2)
    values = out[unchanged].astype(np.int16)
    out[unchanged] = np.where(values < 255, values + 1, values - 1).astype(np.uint8)
    return out, region.copy()


def perlin_anomaly(
    image: np.ndarray, texture: np.ndarray, rng: np.random.Generator, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """DRAEM anomaly: Perlin-noise region filled with a blended foreign texture.

    Args:
        image: ``uint8`` RGB source ``(H, W, 3)``.
        texture: ``uint8`` RGB texture of any size (resized to ``(H, W)``).
        rng: random generator.
        threshold: noise level above which pixels belong to the region.

    Returns:
        ``(anomalous image (H, W, 3) uint8, mask (H, W) bool)``.
    """
    shape = image.shape[:2]
    res = (2 ** int(rng.integers(0, 6)), 2 ** int(rng.integers(0, 6)))
    region = perlin_noise(shape, res, rng) > threshold
    opacity = rng.uniform(0.15, 1.0)
    blend = (1.0 - opacity) * image + opacity * _fit(texture, shape)
    return _composite(image, region, np.rint(blend).astype(np.uint8))


def cutpaste_anomaly(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste anomaly: a rectangle (2-15 % of the area) of the image, jittered, pasted elsewhere.

    The donor copy gets a brightness and a contrast factor in ``[0.9, 1.1]``
    (CutPaste's colour jitter), so the patch stands out on regular textures.

    Returns:
        ``(anomalous image (H, W, 3) uint8, mask (H, W) bool)``.
    """
    brightness, contrast = rng.uniform(0.9, 1.1, size=2)
    mean = image.mean()
    jittered = np.clip(((image - mean) * contrast + mean) * brightness, 0, 255)
    return patchswap_anomaly(image, np.rint(jittered).astype(np.uint8), rng)


def patchswap_anomaly(image: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Patch swap: a rectangle (2-15 % of the area) of ``other`` pasted into ``image``.

    Args:
        image: ``uint8`` RGB source ``(H, W, 3)``.
        other: ``uint8`` RGB donor of any size (resized to ``(H, W)``).
        rng: random generator.

    Returns:
        ``(anomalous image (H, W, 3) uint8, mask (H, W) bool)``.
    """
    shape = image.shape[:2]
    donor = _fit(other, shape)
    box = _box(shape, rng, (0.02, 0.15))
    (src_y, src_x), (dst_y, dst_x) = _corner(shape, box, rng), _corner(shape, box, rng)
    fill = image.copy()
    fill[dst_y : dst_y + box[0], dst_x : dst_x + box[1]] = donor[src_y : src_y + box[0], src_x : src_x + box[1]]
    region = np.zeros(shape, dtype=bool)
    region[dst_y : dst_y + box[0], dst_x : dst_x + box[1]] = True
    return _composite(image, region, fill)


def scar_anomaly(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste-scar: a thin rotated rectangle, random colour or the image shifted.

    With ``side = sqrt(H * W)``, the scar is 10-35 % of ``side`` long and 2-6 % of it wide.

    Returns:
        ``(anomalous image (H, W, 3) uint8, mask (H, W) bool)``.
    """
    height, width = image.shape[:2]
    side = np.sqrt(height * width)
    length, thickness = rng.uniform(0.10, 0.35) * side, max(1.0, rng.uniform(0.02, 0.06) * side)
    angle = rng.uniform(0.0, np.pi)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    yy, xx = np.mgrid[0:height, 0:width]
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    region = (np.abs(along) <= length / 2) & (np.abs(across) <= thickness / 2)
    if rng.random() < 0.5:
        fill = np.broadcast_to(rng.integers(0, 256, size=3, dtype=np.uint8), image.shape)
    else:
        shift = (int(rng.integers(-height // 2, height // 2 + 1)), int(rng.integers(-width // 2, width // 2 + 1)))
        fill = np.roll(image, shift, axis=(0, 1))
    return _composite(image, region, fill)


def lesion_alpha(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Soft mask of one compact, irregular blob covering 0.5-8 % of the image.

    The blob's profile is an elliptic Gaussian envelope times ``1 + 0.4 * perlin`` (one to two noise
    cells across); the blob is where the profile exceeds 1/2, and the opacity ramps from 0 at its
    edge to 1 over a random 0.1-0.4 of the profile.

    Returns:
        ``float64`` array ``(H, W)`` in ``[0, 1]``, above 0 exactly on the blob.
    """
    height, width = shape
    area = rng.uniform(0.005, 0.08) * height * width
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    sigma = np.sqrt(area / (np.pi * 2.0 * np.log(2.0)))
    sigma_y, sigma_x = sigma * np.sqrt(aspect), sigma / np.sqrt(aspect)
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    yy, xx = np.mgrid[0:height, 0:width]
    envelope = np.exp(-0.5 * (((yy + 0.5 - cy) / sigma_y) ** 2 + ((xx + 0.5 - cx) / sigma_x) ** 2))
    cells = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    profile = envelope * (1.0 + 0.4 * perlin_noise(shape, cells, rng))
    ramp = rng.uniform(0.1, 0.4)
    return np.clip((profile - 0.5) / ramp, 0.0, 1.0)


def _blend_lesion(image: np.ndarray, alpha: np.ndarray, changed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with ``changed`` (float, same shape) seen through ``alpha``; the mask is ``alpha > 0``."""
    weight = alpha[:, :, None]
    fill = np.clip(np.rint((1.0 - weight) * image + weight * changed), 0, 255).astype(np.uint8)
    return _composite(image, alpha > 0, fill)


def _smoothed(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of each channel of ``(H, W, 3)``, float64."""
    return ndimage.gaussian_filter(image.astype(np.float64), sigma=(sigma, sigma, 0.0))


def lesion_anomaly(
    kind: str, image: np.ndarray, texture: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A lesion-like anomaly (``blob``, ``texture``, ``blur`` or ``contrast``) on one soft blob.

    Args:
        kind: one of :data:`LESION_KINDS`.
        image: ``uint8`` RGB source ``(H, W, 3)``.
        texture: ``uint8`` RGB texture of any size (resized to ``(H, W)``; ``texture`` only).
        rng: random generator.

    Returns:
        ``(anomalous image (H, W, 3) uint8, mask (H, W) bool)``, mask == changed pixels.
    """
    shape = image.shape[:2]
    alpha = lesion_alpha(shape, rng)
    side = np.sqrt(shape[0] * shape[1])
    source = image.astype(np.float64)
    if kind == "blob":
        changed = source + rng.choice((-1.0, 1.0)) * rng.uniform(20.0, 90.0)
    elif kind == "texture":
        opacity = rng.uniform(0.5, 1.0)
        changed = (1.0 - opacity) * source + opacity * _fit(texture, shape)
    elif kind == "blur":
        changed = _smoothed(image, rng.uniform(0.015, 0.05) * side)
    else:
        factor = rng.uniform(0.2, 0.6) if rng.random() < 0.5 else rng.uniform(1.6, 3.0)
        local_mean = _smoothed(image, rng.uniform(0.03, 0.06) * side)
        changed = local_mean + factor * (source - local_mean)
    return _blend_lesion(image, alpha, changed)


def _inverted_rectangle(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fallback: invert a random rectangle; every pixel in it changes."""
    region = _rectangle_region(image.shape[:2], rng, (0.02, 0.15))
    return _composite(image, region, 255 - image)


def make_anomaly(
    kind: str,
    image: np.ndarray,
    foreign: np.ndarray,
    rng: np.random.Generator,
    min_area: float = 0.002,
    attempts: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one anomaly of ``kind`` that visibly changes at least ``min_area`` of the image.

    Args:
        kind: one of :data:`SYNTHETIC_KINDS`.
        image: ``uint8`` RGB source ``(H, W, 3)``.
        foreign: ``uint8`` RGB texture (``perlin``, ``texture``) or donor (``patchswap``); unused otherwise.
        rng: random generator.
        min_area: minimum fraction of visibly changed pixels (see :data:`VISIBLE_LEVELS`).
        attempts: draws before falling back to an inverted rectangle.

    Returns:
        ``(anomalous image (H, W, 3) uint8, mask (H, W) bool)``, mask == changed pixels.

    Raises:
        ValueError: unknown kind or an image that is not ``uint8 (H, W, 3)``.
    """
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; valid: {', '.join(SYNTHETIC_KINDS)}")
    for array in (image, foreign):
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected uint8 (H, W, 3) arrays, got {array.dtype} {array.shape}")
    needed = max(1, int(np.ceil(min_area * image.shape[0] * image.shape[1])))
    for _ in range(attempts):
        if kind == "perlin":
            out, mask = perlin_anomaly(image, foreign, rng)
        elif kind == "patchswap":
            out, mask = patchswap_anomaly(image, foreign, rng)
        elif kind == "cutpaste":
            out, mask = cutpaste_anomaly(image, rng)
        elif kind in LESION_KINDS:
            out, mask = lesion_anomaly(kind, image, foreign, rng)
        else:
            out, mask = scar_anomaly(image, rng)
        visible = np.abs(out.astype(np.int16) - image).max(axis=2) >= VISIBLE_LEVELS
        if visible.sum() >= needed:
            return out, mask
    logger.debug("%s anomaly below %d pixels after %d draws: inverting a rectangle", kind, needed, attempts)
    return _inverted_rectangle(image, rng)
