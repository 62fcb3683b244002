"""Polarity and background augmentations of the auxiliary (industrial) training samples.

Industrial defects are mostly darker than their surface (blowholes, cracks), so
a head trained on them alone learns "dark is anomalous" and, zero-shot, marks
the black background around a scan instead of a bright lesion. Two generic
augmentations remove that shortcut without any medical image:

* ``invert``: the image's intensities are inverted (``1 - x``), the mask kept;
* ``shrinkpad``: the image and its mask are shrunk by a random factor in
  ``[0.5, 0.9]`` and placed at a random position on a black canvas, which is
  normal (mask 0): black surroundings are not anomalies.

Randomness is per item (``(seed, epoch, index)``), as for synthetic anomalies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from visualad_med.errors import SettingError

AUGMENTATIONS = ("invert", "shrinkpad")
SHRINK_RANGE = (0.5, 0.9)
_STREAM = 2  # independent of the synthetic-anomaly and mixing draws


def parse_augmentations(text: str) -> tuple[str, ...]:
    """Parse ``invert,shrinkpad`` (or ``all``); raises ``ValueError`` listing valid names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    names = list(AUGMENTATIONS) if names == ["all"] else names
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown or not names:
        raise SettingError("augment",
                           f"unknown augmentations {unknown or text!r}; valid: {', '.join(AUGMENTATIONS)}, all")
    return tuple(dict.fromkeys(names))


def invert(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Invert a normalised ``(3, S, S)`` image in intensity space: ``x -> 1 - x`` before normalisation."""
    return ((1 - (image * std + mean)) - mean) / std


def shrink_pad(
    image: torch.Tensor, mask: torch.Tensor, scale: float, corner: tuple[float, float], black: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink ``(3, S, S)`` image and ``(S, S)`` mask by ``scale`` onto a black canvas.

    Args:
        image: normalised image.
        mask: 0/1 mask.
        scale: side factor in ``(0, 1]``.
        corner: position of the shrunk image's corner as fractions of the free space.
        black: ``(3, 1, 1)`` normalised value of black.

    Returns:
        ``(image, mask)`` of the original size; the mask is binarised at 0.5.
    """
    size = image.shape[-1]
    side = max(1, round(size * scale))
    top, left = (round((size - side) * fraction) for fraction in corner)
    small = F.interpolate(image[None], size=(side, side), mode="bilinear", align_corners=False, antialias=True)[0]
    small_mask = F.interpolate(mask[None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    canvas = black.expand_as(image).clone()
    canvas[:, top : top + side, left : left + side] = small
    canvas_mask = torch.zeros_like(mask)
    canvas_mask[top : top + side, left : left + side] = (small_mask > 0.5).float()
    return canvas, canvas_mask


class AugmentedDataset(Dataset):
    """Applies each augmentation with probability ``probability`` to the items of ``base``.

    Args:
        base: samples under the common sample contract (``image``, ``mask``, ...).
        kinds: augmentations from :data:`AUGMENTATIONS`.
        mean: the normalisation mean of ``base``'s images.
        std: the normalisation std.
        probability: chance of each augmentation per item.
        seed: base seed.
    """

    def __init__(
        self,
        base: Dataset,
        kinds: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        probability: float = 0.5,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise SettingError("augment", f"augmentation probability must be in [0, 1], got {probability}")
        self.base, self.kinds, self.probability, self.seed, self.epoch = base, tuple(kinds), probability, seed, 0
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    @property
    def skipped(self) -> int:
        return getattr(self.base, "skipped", 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.base[index]
        if item is None:
            return None
        rng = np.random.default_rng((self.seed, _STREAM, self.epoch, index))
        image, mask = item["image"], item["mask"]
        if "invert" in self.kinds and rng.random() < self.probability:
            image = invert(image, self.mean, self.std)
        if "shrinkpad" in self.kinds and rng.random() < self.probability:
            scale = float(rng.uniform(*SHRINK_RANGE))
            image, mask = shrink_pad(image, mask, scale, tuple(rng.random(2)), -self.mean / self.std)
        return {**item, "image": image, "mask": mask}
