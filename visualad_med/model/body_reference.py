"""Body-referenced anomaly maps: each map minus its median over the image's own body.

Zero-shot, a head trained on industrial data answers "how unlike the training
surfaces is this patch" as much as "how unlike its surroundings": every patch
of tissue scores above the black background, and the level of that plateau
varies from subject to subject and scanner to scanner. A lesion is a region
that stands out from the rest of the *same* image's tissue, so the map is
re-referenced to the median of the map over the image's body, the pixels
brighter than :data:`BODY_LEVEL` of the image's brightest grey level (air and
the black canvas around a scan are not body). An image with less than
:data:`MIN_BODY_FRACTION` of body is referenced to its whole area.
What it changes on the dev sets: the model card.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BODY_LEVEL = 0.1
"""Body = grey level above this fraction of the image's brightest grey level (``grey = mean of RGB``)."""
MIN_BODY_FRACTION = 0.01


def body_mask(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], level: float = BODY_LEVEL
) -> torch.Tensor:
    """Body pixels of normalised ``(B, 3, H, W)`` images; returns a bool ``(B, H, W)``.

    Images are un-normalised with ``mean``/``std`` and averaged over channels;
    an image whose body covers less than :data:`MIN_BODY_FRACTION` is all body.
    """
    scale = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    shift = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    grey = (images.float() * scale + shift).mean(dim=1)
    brightest = grey.flatten(1).amax(dim=1).clamp_min(0.0).view(-1, 1, 1)
    body = grey > level * brightest
    too_small = body.flatten(1).float().mean(dim=1) < MIN_BODY_FRACTION
    body[too_small] = True
    return body


def reference_to_body(maps: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
    """``maps`` ``(B, H, W)`` minus each map's median over ``body`` ``(B, H, W)`` (lower median, as torch's)."""
    outside = torch.full_like(maps, float("nan"))
    medians = torch.where(body, maps, outside).flatten(1).nanmedian(dim=1).values
    return maps - medians.view(-1, 1, 1)


def volume_body_mask(volume: torch.Tensor, intensity_range: tuple[float, float], level: float = BODY_LEVEL,
                     chunk_voxels: int = 1 << 23) -> torch.Tensor:
    """Body voxels of an ``(X, Y, Z)`` volume: the volume counterpart of :func:`body_mask`.

    Intensities are windowed to [0, 1] with ``intensity_range`` (``(low, high)``, as the
    slice inferer applied them); body = above ``level`` x the volume's brightest windowed
    voxel. A body under :data:`MIN_BODY_FRACTION` of the volume makes every voxel body.
    The windowed volume is computed slab by slab (about ``chunk_voxels`` at a time, along the
    axis slowest in memory), so memory stays at the bool mask (a float copy of a 600-slice CT is
    0.6 GB); its brightest voxel is the windowed brightest intensity (windowing is monotonic).
    The mask has the volume's memory layout.
    """
    low, high = intensity_range
    scale = max(high - low, 1e-12)

    def grey(values: torch.Tensor) -> torch.Tensor:
        return ((values.float() - low) / scale).clamp(0.0, 1.0)

    threshold = level * grey(volume.amax())
    body = torch.empty_like(volume, dtype=torch.bool)
    axis = max(range(volume.ndim), key=volume.stride)
    step = max(1, chunk_voxels // max(1, volume.numel() // max(1, volume.shape[axis])))
    for start in range(0, volume.shape[axis], step):
        count = min(step, volume.shape[axis] - start)
        body.narrow(axis, start, count).copy_(grey(volume.narrow(axis, start, count)) > threshold)
    if int(body.count_nonzero()) < MIN_BODY_FRACTION * body.numel():
        body[...] = True
    return body
