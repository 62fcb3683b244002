"""Synthetic anomalies with exact masks, an option of the auxiliary training stage.

Data sets of synthetic anomalies (:mod:`visualad_med.training.anomaly_kinds` draws them on a
normal image at its own resolution) and the mix of them into a real training set. Image and
mask are resized to ``S x S`` only after the draw.

Randomness is per item: the generator for item ``i`` is seeded with
``(seed, epoch, i)``, so the output depends neither on the order of access nor
on ``DataLoader`` workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from visualad_med.errors import SettingError
from visualad_med.io.images import check_normalisation, image_to_tensor, list_images, mask_to_tensor, read_rgb
from visualad_med.datasets.samples import READ_ERRORS, AnomalyDataset, SampleRecord, SkipCounter, skip_unreadable
from .anomaly_kinds import KIND_GROUPS, SYNTHETIC_KINDS, TEXTURE_KINDS, make_anomaly

SKIMAGE_SOURCE = "skimage"
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass",
    "gravel", "hubble_deep_field", "moon", "page", "rocket", "text",
)  # fmt: skip
"""Non-medical photos bundled with scikit-image (``skimage.data``), usable as textures."""

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
        kinds: comma-separated kinds and groups (:data:`KIND_GROUPS`: ``industrial``, ``lesion``, ``all``).
        probability: replacement probability in ``[0, 1]``.
        sources: folders of extra (non-medical) texture images and/or ``"skimage"``.
        bases: folders of extra (non-medical) normal images and/or ``"skimage"``.

    Raises:
        ValueError: an unknown kind (valid ones listed), no kind, a probability
            outside ``[0, 1]``, or a source or base that is neither ``skimage`` nor
            a folder with images.
    """
    names = [name for k in kinds.split(",") if k.strip() for name in KIND_GROUPS.get(k.strip(), (k.strip(),))]
    unknown = [k for k in names if k not in SYNTHETIC_KINDS]
    if unknown or not names:
        raise SettingError("synthetic",
                           f"unknown synthetic kinds {unknown or kinds!r}; valid: {', '.join(SYNTHETIC_KINDS + tuple(KIND_GROUPS))}")
    if not 0.0 <= probability <= 1.0:
        raise SettingError("synthetic", f"synthetic probability must be in [0, 1], got {probability}")
    for option, folders in (("source", sources), ("base", bases)):
        for folder in folders:
            if folder != SKIMAGE_SOURCE and not list_images(Path(folder)):
                raise SettingError("synthetic", f"synthetic {option} {folder!r} is neither {SKIMAGE_SOURCE!r} nor a "
                                   "folder with images")
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
        pool = self.textures if kind in TEXTURE_KINDS and self.textures else others
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
            raise SettingError("synthetic", f"synthetic probability must be in [0, 1], got {probability}")
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
