"""VisualAD's per-tap head: Spatial-aware Cross-Attention and Self-Alignment Function.

``shared/design/visualad.md`` sections 3 and 4. One SCA and one SAF per tap
layer; SCA is shared between the anomaly and the normal token of its layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import resize_patch_table, square_grid


class SpatialCrossAttention(nn.Module):
    """Refines a token with spatial evidence from one tap layer's patches.

    ``K`` learned anchor queries attend over the patches (keys carry a learned
    positional table); a token-conditioned gate mixes the ``K`` aggregates,
    and the result is added to the token with a learned residual scale.

    Args:
        dim: token width ``D``.
        grid: patch grid ``(h, w)`` the positional table is sized for; other
            grids resample it bilinearly (the reference's fixed 1536-row table
            silently truncated instead).
        num_anchors: ``K``.
        dropout: on the attention weights and on the output.
        res_scale_init: initial residual scale ``s``.
    """

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        num_anchors: int = 4,
        dropout: float = 0.1,
        res_scale_init: float = 0.01,
    ):
        super().__init__()
        self.grid = tuple(grid)
        self.anchor_queries = nn.Parameter(torch.randn(num_anchors, dim) * 0.02)
        self.pos_encoding = nn.Parameter(torch.randn(1, grid[0] * grid[1], dim) * 0.02)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = nn.LayerNorm(dim)
        self.k_norm = nn.LayerNorm(dim)
        self.gate = nn.Sequential(nn.Linear(dim, num_anchors), nn.Sigmoid())
        self.out_proj = nn.Linear(dim, dim)
        self.res_scale = nn.Parameter(torch.tensor([res_scale_init]))
        self.attn_drop = nn.Dropout(dropout)
        self.out_drop = nn.Dropout(dropout)
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(self.out_proj.bias)

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """Positional table ``(1, h * w, D)`` for a patch grid ``(h, w)``."""
        return resize_patch_table(self.pos_encoding, square_grid(self.pos_encoding.shape[1]), grid)

    def forward(self, tokens: torch.Tensor, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Refine ``tokens``.

        Args:
            tokens: ``(B, T, D)``, here the anomaly and normal tokens (``T = 2``).
            patches: ``(B, N, D)`` patch tokens of this tap layer, ``N = h * w``.
            grid: ``(h, w)``.

        Returns:
            ``(B, T, D)`` refined tokens.
        """
        dim = patches.shape[-1]
        queries = self.q_norm(self.q_proj(self.anchor_queries))
        keys = self.k_norm(self.k_proj(patches + self.positions(grid)))
        values = self.v_proj(patches)
        weights = torch.softmax(queries @ keys.transpose(1, 2) / dim**0.5, dim=-1)
        aggregates = self.attn_drop(weights) @ values
        gates = self.gate(tokens)
        mixed = gates @ aggregates
        return tokens + self.res_scale * self.out_drop(self.out_proj(mixed))


class SelfAlignment(nn.Module):
    """SAF: ``Linear -> GELU -> Dropout -> Linear -> Dropout`` on every token, no residual.

    Args:
        dim: token width ``D`` (also the hidden width).
        dropout: after the activation and after the second linear.
    """

    def __init__(self, dim: int, dropout: float = 0.1):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim), nn.Dropout(dropout)
        )
        for index in (0, 3):
            nn.init.xavier_uniform_(self.mlp[index].weight)
            nn.init.zeros_(self.mlp[index].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., D)``."""
        return self.mlp(features)


def token_contrast(features: torch.Tensor, anomaly: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Per-patch score ``cos(f, a) - cos(f, n)``.

    Args:
        features: ``(B, N, D)`` aligned patch features.
        anomaly: ``(B, D)`` refined anomaly token.
        normal: ``(B, D)`` refined normal token.

    Returns:
        ``(B, N)`` scores in ``[-2, 2]``.
    """
    features = F.normalize(features, dim=-1)
    tokens = F.normalize(torch.stack([anomaly, normal], dim=1), dim=-1)
    similarity = features @ tokens.transpose(1, 2)
    return similarity[..., 0] - similarity[..., 1]
