"""Training-free self-similarity scoring on the frozen backbone's patch features.

A patch is anomalous when it resembles no other patch of its own image: its
score is ``1 - mean cos(p, q)`` over its ``k`` most similar other patches ``q``,
summed over a few middle layers. Needs no head and no training data, so it is
the honest baseline for every table and a usable option for users without a
trained head; combined with a trained head's map it is also the default
scoring of the shipped head (see the bundle's model card).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_NEIGHBOURS = 5


def default_layers(depth: int) -> tuple[int, ...]:
    """``L/2`` and ``3L/4`` (6 and 9 of 12 blocks)."""
    return (max(1, round(depth / 2)), max(1, round(3 * depth / 4)))


def self_similarity_scores(patches: torch.Tensor, neighbours: int = DEFAULT_NEIGHBOURS) -> torch.Tensor:
    """Dissimilarity of each patch to its nearest patches in the same image.

    Args:
        patches: ``(B, N, D)`` patch features of one layer.
        neighbours: ``k``, the number of most similar other patches averaged.

    Returns:
        ``(B, N)`` scores in ``[0, 2]``: ``1 - mean`` of the top-``k`` cosine
        similarities to other patches (a patch is never its own neighbour).
    """
    count = patches.shape[1]
    if count < 2:
        raise ValueError(f"self-similarity needs at least 2 patches, got {count}")
    k = min(neighbours, count - 1)
    features = F.normalize(patches.float(), dim=-1)
    similarity = features @ features.transpose(1, 2)
    similarity.diagonal(dim1=1, dim2=2).fill_(-2.0)
    return 1.0 - similarity.topk(k, dim=-1).values.mean(dim=-1)
