"""Synthetic anomalies with exact masks, an option of the auxiliary training stage.

Four kinds, each drawn on a normal ``uint8`` RGB image at its own resolution:

* ``perlin`` (DRAEM, Zavrtanik et al., ICCV 2021): the region where Perlin noise
  exceeds a threshold is filled with a foreign texture blended with a random
  opacity in ``[0.15, 1]``;
* ``cutpaste`` (CutPaste, Li et al., CVPR 2021): a rectangle of the same image,
  with a small brightness/contrast jitter, pasted elsewhere;
* ``scar`` (CutPaste-scar): a thin rotated rectangle filled with a random colour
  or with the same image shifted;
* ``patchswap``: a rectangle taken from another normal image.

The mask is exactly the set of changed pixels: every pixel outside it is
byte-identical to the source and every pixel inside differs. Where a fill
happens to equal the source (same-image patches on flat texture), the pixel is
moved by one grey level (+1, or -1 at 255) so the region stays solid. A draw
is redrawn unless at least ``min_area`` of the image changes visibly (by
``VISIBLE_LEVELS`` grey levels or more in some channel; this rejects, e.g., a
patch of black background pasted on black background); after ``attempts``
draws a random rectangle is inverted (``255 - x``). Image and mask are resized
to ``S x S`` only afterwards.

Randomness is per item: the generator for item ``i`` is seeded with
``(seed, epoch, i)``, so the output depends neither on the order of access nor
on ``DataLoader`` workers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from visualad_med.io.images import check_normalisation, image_to_tensor, list_images, mask_to_tensor, read_rgb
from visualad_med.datasets.samples import READ_ERRORS, AnomalyDataset, SampleRecord, SkipCounter, skip_unreadable

logger = logging.getLogger(__name__)

SYNTHETIC_KINDS: tuple[str, ...] = ("perlin", "cutpaste", "scar", "patchswap")
SKIMAGE_SOURCE = "skimage"
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass",
    "gravel", "hubble_deep_field", "moon", "page", "rocket", "text",
)  # fmt: skip
"""Non-medical photos bundled with scikit-image (``skimage.data``), usable as textures."""

VISIBLE_LEVELS = 4
"""Smallest change (grey levels, any channel) counted as visible when checking ``min_area``."""

_RESIZE_ATTEMPTS = 8
_MIX_STREAM = 1  # keeps the mixing draws independent of the synthetic draws


@dataclass(frozen=True)
class SyntheticSpec:
    """Parsed ``--synthetic`` options.

    Attributes:
        kinds: anomaly kinds, a subset of :data:`SYNTHETIC_KINDS`.
        probability: chance that a training item is replaced by a synthetic anomaly.
        sources: extra texture sources: folders of images and/or ``"skimage"``.
        bases: extra normal images to draw anomalies on, besides the training set's
            normal images: folders of images and/or ``"skimage"``.
    """

    kinds: tuple[str, ...]
    probability: float
    sources: tuple[str, ...] = ()
    bases: tuple[str, ...] = ()


def parse_synthetic_spec(
    kinds: str, probability: float = 0.5, sources: Sequence[str] = (), bases: Sequence[str] = ()
) -> SyntheticSpec:
    """Parse a CLI spec such as ``--synthetic perlin,cutpaste --synthetic-source skimage``.

    Args:
        kinds: comma-separated kinds, or ``"all"``.
        probability: replacement probability in ``[0, 1]``.
        sources: folders of extra (non-medical) texture images and/or ``"skimage"``.
        bases: folders of extra (non-medical) normal images and/or ``"skimage"``.

    Raises:
        ValueError: an unknown kind (valid ones listed), no kind, a probability
            outside ``[0, 1]``, or a source or base that is neither ``skimage`` nor
            a folder with images.
    """
    names = [k.strip() for k in kinds.split(",") if k.strip()]
    names = list(SYNTHETIC_KINDS) if names == ["all"] else names
    unknown = [k for k in names if k not in SYNTHETIC_KINDS]
    if unknown or not names:
        raise ValueError(f"unknown synthetic kinds {unknown or kinds!r}; valid: {', '.join(SYNTHETIC_KINDS)}, all")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"synthetic probability must be in [0, 1], got {probability}")
    for option, folders in (("source", sources), ("base", bases)):
        for folder in folders:
            if folder != SKIMAGE_SOURCE and not list_images(Path(folder)):
                raise ValueError(f"synthetic {option} {folder!r} is neither {SKIMAGE_SOURCE!r} nor a folder with images")
    return SyntheticSpec(tuple(dict.fromkeys(names)), float(probability), tuple(sources), tuple(bases))


def load_image_sources(sources: Sequence[str]) -> list[tuple[Path, Path | np.ndarray]]:
    """``(name, image)`` for the images of ``sources``: each folder's files, or the photos for ``"skimage"``."""
    images: list[tuple[Path, Path | np.ndarray]] = []
    for source in sources:
        if source == SKIMAGE_SOURCE:
            images += [(Path(SKIMAGE_SOURCE) / name, photo) for name, photo in zip(SKIMAGE_PHOTOS, load_skimage_photos())]
        else:
            images += [(path, path) for path in list_images(Path(source))]
    return images


def random_crop(image: np.ndarray, rng: np.random.Generator, smallest: float = 0.5) -> np.ndarray:
    """A random square crop of ``image`` ``(H, W, C)`` with side in ``[smallest, 1] * min(H, W)``."""
    height, width = image.shape[:2]
    side = max(1, int(round(rng.uniform(smallest, 1.0) * min(height, width))))
    top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    return image[top:top + side, left:left + side]


def load_skimage_photos() -> list[np.ndarray]:
    """The :data:`SKIMAGE_PHOTOS` as ``uint8`` RGB arrays ``(H, W, 3)``."""
    import skimage.data

    photos = []
    for name in SKIMAGE_PHOTOS:
        array = getattr(skimage.data, name)()
        rgb = np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array[:, :, :3]
        photos.append(np.ascontiguousarray(rgb, dtype=np.uint8))
    return photos


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
    height, width = shape = image.shape[:2]
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
        foreign: ``uint8`` RGB texture (``perlin``) or donor (``patchswap``); unused otherwise.
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
        else:
            out, mask = scar_anomaly(image, rng)
        visible = np.abs(out.astype(np.int16) - image).max(axis=2) >= VISIBLE_LEVELS
        if visible.sum() >= needed:
            return out, mask
    logger.debug("%s anomaly below %d pixels after %d draws: inverting a rectangle", kind, needed, attempts)
    return _inverted_rectangle(image, rng)


class SyntheticAnomalyDataset(Dataset):
    """Synthetic anomalies drawn on normal images, under the common sample contract.

    Item ``i`` uses normal image ``i % len(normals)`` (or, when ``bases`` are given,
    with probability 1/2 a random square crop of one of the base images), a kind drawn from
    ``kinds`` and, for ``perlin``, a texture from ``sources`` (or from the other
    normal images when no source is given); ``patchswap`` takes its donor from
    the normal images. Samples have ``label`` 1, ``has_mask`` True and ``path``
    ``"<image path>#synthetic-<kind>"``.

    Args:
        normals: a data set (its normal images are used) or normal image records / paths.
        image_size: output side ``S``; images ``(3, S, S)``, masks ``(S, S)``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        kinds: anomaly kinds to draw from.
        sources: extra texture folders and/or ``"skimage"``.
        bases: extra normal image folders and/or ``"skimage"`` to draw anomalies on.
        seed: base seed; item ``i`` uses ``default_rng((seed, epoch, i))``.
        length: number of items; ``len(normals)`` when None.
        min_area: minimum fraction of visibly changed pixels per anomaly.

    Raises:
        ValueError: no normal image, an unknown kind, or an invalid source.
    """

    def __init__(
        self,
        normals: AnomalyDataset | Sequence[SampleRecord | str | Path],
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        kinds: Sequence[str] = SYNTHETIC_KINDS,
        sources: Sequence[str] = (),
        seed: int = 0,
        length: int | None = None,
        min_area: float = 0.002,
        bases: Sequence[str] = (),
    ) -> None:
        check_normalisation(image_size, mean, std)
        spec = parse_synthetic_spec(",".join(kinds), 1.0, sources, bases)
        items = normals.normal_records() if isinstance(normals, AnomalyDataset) else list(normals)
        self.normals = [r if isinstance(r, SampleRecord) else SampleRecord(Path(r), 0, "synthetic") for r in items]
        if not self.normals:
            raise ValueError("synthetic anomalies need at least one normal image; none given")
        self.kinds, self.image_size, self.mean, self.std = spec.kinds, image_size, tuple(mean), tuple(std)
        self.textures = [image for _, image in load_image_sources(spec.sources)]
        self.bases = load_image_sources(spec.bases)
        self.seed, self.epoch, self.min_area = seed, 0, min_area
        self.length = len(self.normals) if length is None else length
        self._skipped = SkipCounter()

    @property
    def skipped(self) -> int:
        """Number of items skipped because a file could not be read."""
        return self._skipped.value

    def set_epoch(self, epoch: int) -> None:
        """Draw different (still reproducible) anomalies in another epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    @staticmethod
    def _read(item: SampleRecord | Path | np.ndarray) -> np.ndarray:
        """The image of a record, file or array; a read error carries the path as ``filename``."""
        if isinstance(item, np.ndarray):
            return item
        path = item.path if isinstance(item, SampleRecord) else item
        try:
            return read_rgb(path)
        except READ_ERRORS as err:
            raise OSError(None, str(err), str(path)) from err

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray, str, SampleRecord]:
        """Draw item ``index`` at the source resolution.

        An anomaly too small to survive resizing to ``S x S`` is redrawn (up
        to 8 draws in all).

        Returns:
            ``(image (H, W, 3) uint8, mask (H, W) bool, kind, source record)``.

        Raises:
            OSError: the source image, texture or donor cannot be read (``filename`` is its path).
        """
        rng = np.random.default_rng((self.seed, self.epoch, index))
        record = self.normals[index % len(self.normals)]
        on_base = bool(self.bases) and rng.random() < 0.5
        if on_base:
            name, base = self.bases[int(rng.integers(len(self.bases)))]
            record = SampleRecord(name, 0, "synthetic")
        kind = str(rng.choice(self.kinds))
        others = [r for r in self.normals if r.path != record.path] or self.normals
        pool = self.textures if kind == "perlin" and self.textures else others
        foreign = pool[int(rng.integers(len(pool)))]
        image = random_crop(self._read(base), rng) if on_base else self._read(record)
        texture = self._read(foreign)
        for _ in range(_RESIZE_ATTEMPTS):
            anomalous, mask = make_anomaly(kind, image, texture, rng, self.min_area)
            if mask_to_tensor(mask, self.image_size).any():
                break
        return anomalous, mask, kind, record

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        """One synthetic sample dict, or ``None`` (logged, counted) when a file is unreadable."""
        try:
            image, mask, kind, record = self.generate(index)
        except OSError as err:
            skip_unreadable(self._skipped, err.filename, err.strerror)
            return None
        return {
            "image": image_to_tensor(image, self.image_size, self.mean, self.std),
            "valid": torch.tensor((0, 0, self.image_size, self.image_size)),
            "mask": mask_to_tensor(mask, self.image_size),
            "label": 1,
            "class_name": record.class_name,
            "path": f"{record.path}#synthetic-{kind}",
            "has_mask": True,
        }


class MixedAnomalyDataset(Dataset):
    """A real data set whose items are replaced by synthetic anomalies with probability ``p``.

    Args:
        base: the real (training) data set.
        synthetic: the synthetic anomaly data set.
        probability: replacement probability ``p`` in ``[0, 1]``.
        seed: item ``i`` decides with ``default_rng((seed, 1, epoch, i))``.
    """

    def __init__(self, base: Dataset, synthetic: SyntheticAnomalyDataset, probability: float, seed: int = 0) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"synthetic probability must be in [0, 1], got {probability}")
        self.base, self.synthetic, self.probability, self.seed, self.epoch = base, synthetic, probability, seed, 0

    @property
    def skipped(self) -> int:
        """Unreadable files skipped by the base and synthetic data sets."""
        return getattr(self.base, "skipped", 0) + self.synthetic.skipped

    def set_epoch(self, epoch: int) -> None:
        """Change the draws of this and the synthetic data set for another epoch."""
        self.epoch = epoch
        self.synthetic.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        rng = np.random.default_rng((self.seed, _MIX_STREAM, self.epoch, index))
        if rng.random() < self.probability:
            return self.synthetic[int(rng.integers(len(self.synthetic)))]
        return self.base[index]


def build_synthetic_training_set(base: AnomalyDataset, spec: SyntheticSpec, seed: int = 0) -> MixedAnomalyDataset:
    """Mix synthetic anomalies drawn on ``base``'s normal images into ``base``.

    Args:
        base: the real training set (its image size and normalisation are reused).
        spec: parsed ``--synthetic`` options.
        seed: base seed.

    Raises:
        ValueError: ``base`` has no normal image, or ``spec`` is invalid.
    """
    synthetic = SyntheticAnomalyDataset(
        base, base.image_size, base.mean, base.std, spec.kinds, spec.sources, seed, length=len(base), bases=spec.bases
    )
    return MixedAnomalyDataset(base, synthetic, spec.probability, seed)
