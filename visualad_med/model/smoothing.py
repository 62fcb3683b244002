"""Gaussian smoothing of anomaly maps that matches ``scipy.ndimage.gaussian_filter``.

Written by hand because neither torch nor MONAI offers scipy's boundary rule:
scipy's default ``reflect`` repeats the edge sample (``d c b a | a b c d``),
which is numpy's ``symmetric``, not torch's ``reflect``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy's normalised 1D Gaussian, radius ``int(truncate * sigma + 0.5)``, float64."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * offsets**2 / sigma**2)
    return kernel / kernel.sum()


def symmetric_indices(length: int, radius: int) -> torch.Tensor:
    """Source index of every sample of a signal padded by ``radius`` with scipy's ``reflect``.

    Works for any ``radius``, also larger than ``length`` (the reflection repeats).
    """
    positions = torch.arange(-radius, length + radius) % (2 * length)
    return torch.where(positions < length, positions, 2 * length - 1 - positions)


class GaussianSmoothing(nn.Module):
    """Separable Gaussian filter over the last two axes.

    Args:
        sigma: standard deviation in pixels (VisualAD: 4 at model resolution).
        truncate: radius in standard deviations, as in scipy.
    """

    def __init__(self, sigma: float = 4.0, truncate: float = 4.0):
        super().__init__()
        self.sigma = sigma
        self.register_buffer("kernel", gaussian_kernel1d(sigma, truncate).float(), persistent=False)

    @property
    def radius(self) -> int:
        return self.kernel.numel() // 2

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Smooth ``(B, H, W)`` maps; returns ``(B, H, W)`` in the input's dtype."""
        if maps.ndim != 3:
            raise ValueError(f"expected maps of shape (B, H, W), got {tuple(maps.shape)}")
        batch, height, width = maps.shape
        radius = self.radius
        kernel = self.kernel.to(device=maps.device, dtype=torch.float32)
        rows = symmetric_indices(height, radius).to(maps.device)
        cols = symmetric_indices(width, radius).to(maps.device)
        padded = maps.float()[:, rows][:, :, cols].unsqueeze(1)
        smoothed = F.conv2d(padded, kernel.view(1, 1, -1, 1))
        smoothed = F.conv2d(smoothed, kernel.view(1, 1, 1, -1))
        return smoothed.reshape(batch, height, width).to(maps.dtype)
