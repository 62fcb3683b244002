"""Which slices contain any body: a cheap test on windowed intensities."""

from __future__ import annotations

import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.utils import convert_to_tensor

__all__ = ["has_body"]


def has_body(slices: NdarrayOrTensor, threshold: float = 0.05, min_fraction: float = 0.01) -> torch.Tensor:
    """Flag the slices that contain body.

    A slice contains no body when fewer than ``min_fraction`` of its pixels (all channels
    together) are brighter than ``threshold``. Meant for windowed slices in [0, 1], where air is
    0. Written by hand: MONAI's ``CropForeground`` finds a bounding box, not a per-slice flag.

    Args:
        slices: windowed slices ``(S, C, H, W)`` or ``(S, H, W)`` in [0, 1].
        threshold: intensity above which a pixel counts as body.
        min_fraction: smallest fraction (0..1) of body pixels for a slice to count.

    Returns:
        Bool tensor ``(S,)`` on the device of ``slices``, True where the slice contains body.

    Raises:
        ValueError: if ``slices`` has fewer than 2 dimensions or ``min_fraction`` is outside [0, 1].

    Example:
        >>> import torch
        >>> has_body(torch.stack([torch.zeros(10, 10), torch.ones(10, 10)])).tolist()
        [False, True]
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}.")
    x = convert_to_tensor(slices, track_meta=False)
    if x.ndim < 2:
        raise ValueError(f"expected slices (S, C, H, W) or (S, H, W), got shape {tuple(x.shape)}.")
    fraction = (x > threshold).flatten(1).float().mean(dim=1)
    return fraction >= min_fraction
