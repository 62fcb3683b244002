"""Cohort (mutual) scoring: each patch scored against the most similar patches of the *other* images.

After MuSc (Li et al., ICLR 2024): normal tissue repeats across the images of a
cohort, a lesion does not. For image ``i`` and every other image ``j`` of its
candidate set, the distance of patch ``p`` to ``j`` is ``1 - max_q cos(f_p, f_q)``
over ``j``'s patches ``q`` (frozen backbone tokens of a few layers, averaged over
layers); the patch's score is the mean of the smallest ``fraction`` of those
per-image distances (MuSc's interval average: a lesion that also appears in a
few other images is still scored by the images where it does not). No training,
no text, no labels.

A 2D image is compared with its ``neighbours`` most similar images (by the mean
last-layer token), a default large enough to mean all of them in practice (why:
the model card's cohort section).
For volumes the slices of the *other* scans within a normalised position
``window`` are the candidates (see :func:`position_candidates`), never the
same scan's neighbouring slices. A group of candidates that belong together
(slices of one other scan) counts as one image: its distance is the smallest
over its members.

Cost: each (query, candidate) pair is ``T x N x N x D`` multiply-adds (``T``
layers, ``N`` patches of width ``D``): for M images and C candidates each,
``O(M C T N^2 D)`` time. Candidates are processed in chunks of ``chunk`` images,
so the largest similarity block held is ``chunk x T x N x N`` floats; no
``N^2``-by-cohort matrix is ever formed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

DEFAULT_FRACTION = 0.3
"""Share of the (grouped) candidates, the closest ones, whose distances are averaged."""
DEFAULT_NEIGHBOURS = 4096
"""Candidate images per 2D image, the most similar by global descriptor first: every other image of sets up to
that size (cost grows with the square of the set's size; lower it for large sets)."""
DEFAULT_CHUNK = 32

Candidates = Callable[[int], Sequence[Sequence[int]]]
"""``candidates(i)``: groups of cohort indices that image ``i`` is compared with."""


def default_layers(depth: int) -> tuple[int, ...]:
    """``L/2``, ``3L/4`` and ``L`` (6, 9 and 12 of 12 blocks)."""
    return tuple(sorted({max(1, round(depth / 2)), max(1, round(3 * depth / 4)), depth}))


def stack_features(features: dict[int, torch.Tensor]) -> torch.Tensor:
    """``{layer: (B, N, D)}`` -> ``(B, T, N, D)`` L2-normalised half-precision features (layers in order)."""
    return torch.stack([F.normalize(features[layer].float(), dim=-1) for layer in sorted(features)], 1).half()


def global_descriptors(features: torch.Tensor) -> torch.Tensor:
    """``(M, T, N, D)`` -> ``(M, D)``: the normalised mean patch token of the last layer."""
    return F.normalize(features[:, -1].float().mean(dim=1), dim=-1)


def nearest_candidates(features: torch.Tensor, neighbours: int = DEFAULT_NEIGHBOURS) -> Candidates:
    """2D cohorts: each image against its ``neighbours`` most similar other images (each its own group)."""
    descriptors = global_descriptors(features)
    similarity = descriptors @ descriptors.T
    similarity.fill_diagonal_(-math.inf)
    count = min(neighbours, features.shape[0] - 1)
    order = similarity.topk(count, dim=1).indices if count > 0 else torch.empty(features.shape[0], 0, dtype=torch.long)
    return lambda index: [[int(j)] for j in order[index]]


def position_candidates(scan_of: Sequence[int], position: Sequence[float], window: float = 0.05,
                        per_scan: int = 3, min_gap: float = 0.2) -> tuple[Candidates, bool]:
    """Volume cohorts: a slice against the slices of every other scan near its normalised position.

    Args:
        scan_of: ``(M,)`` scan index of each slice.
        position: ``(M,)`` slice position along the slice axis, ``index / (slices - 1)`` of its scan.
        window: largest position difference of a candidate slice.
        per_scan: most candidate slices taken from one other scan (the nearest in position; at
            least the nearest one, even outside ``window``).
        min_gap: with a single scan, the fallback: the same scan's slices at least this far away.

    Returns:
        ``(candidates, fallback)``: ``fallback`` is True when the cohort is one scan.
    """
    scan_t = torch.as_tensor(scan_of)
    position_t = torch.as_tensor(position, dtype=torch.float64)
    scans = torch.unique(scan_t).tolist()
    if len(scans) == 1:
        def distant(index: int) -> list[list[int]]:
            far = torch.nonzero((position_t - position_t[index]).abs() >= min_gap).flatten()
            return [[int(j)] for j in far]
        return distant, True
    members = {scan: torch.nonzero(scan_t == scan).flatten() for scan in scans}

    def near(index: int) -> list[list[int]]:
        groups = []
        for scan, slices in members.items():
            if scan == int(scan_t[index]):
                continue
            gap = (position_t[slices] - position_t[index]).abs()
            order = gap.argsort()[:per_scan]
            keep = order[gap[order] <= window]
            groups.append(slices[keep if keep.numel() else order[:1]].tolist())
        return groups
    return near, False


def patch_distances(query: torch.Tensor, references: torch.Tensor, chunk: int = DEFAULT_CHUNK,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``1 - max cos`` of each query patch to each reference image, averaged over layers.

    Args:
        query: ``(T, N, D)`` normalised features.
        references: ``(R, T, N', D)`` normalised features.
        chunk: reference images per block (``chunk x T x N x N'`` similarities at a time).
        dtype: of the similarity products (``torch.bfloat16``: 4x faster on CPUs with AMX, similarities
            within ~0.004).

    Returns:
        ``(R, N)`` float32 distances in ``[0, 2]``.
    """
    query = query.to(dtype)
    out = []
    for block in references.split(chunk):
        similarity = torch.einsum("tnd,rtmd->rtnm", query, block.to(dtype))
        out.append(1.0 - similarity.amax(dim=-1).float().mean(dim=1))
    return torch.cat(out) if out else query.new_zeros(0, query.shape[1])


def aggregate_neighbourhood(features: torch.Tensor, grid: tuple[int, int], degree: int) -> torch.Tensor:
    """Each patch feature averaged with its ``degree x degree`` neighbourhood on the patch grid, re-normalised.

    MuSc's LNAMD aggregates patch tokens over neighbourhoods of several degrees (1, 3, 5) so that a patch is
    compared with what surrounds it as well as itself; here the neighbourhood mean of the normalised tokens
    (edges: the mean of the neighbours that exist). ``degree`` 1 returns ``features`` as they are.

    Args:
        features: ``(..., N, D)`` with ``N = grid[0] x grid[1]`` (row-major).
        grid: the patch grid ``(rows, columns)``.
        degree: odd neighbourhood side in patches.

    Returns:
        ``features``' shape and dtype.
    """
    if degree == 1:
        return features
    if degree < 1 or degree % 2 == 0:
        raise ValueError(f"neighbourhood degree must be odd and positive, got {degree}")
    *lead, patches, width = features.shape
    planes = features.reshape(-1, *grid, width).permute(0, 3, 1, 2).float()
    pooled = F.avg_pool2d(planes, degree, stride=1, padding=degree // 2, count_include_pad=False)
    out = F.normalize(pooled.permute(0, 2, 3, 1).reshape(*lead, patches, width), dim=-1)
    return out.to(features.dtype)


def rescore_neighbourhood(scores: torch.Tensor, descriptors: torch.Tensor,
                          windows: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
    """Image scores re-scored over each image's most similar images (MuSc's RsCIN).

    For each window ``k`` an image's score becomes the similarity-weighted mean of the scores of its ``k``
    most similar images by global descriptor (itself included: ``k = 1`` keeps it); the results of the
    windows are averaged. An image unlike its look-alikes moves towards them.

    Args:
        scores: ``(M,)`` image scores.
        descriptors: ``(M, D)`` normalised global descriptors (:func:`global_descriptors`).
        windows: the ``k`` values.

    Returns:
        ``(M,)`` float32 scores.
    """
    similarity = (descriptors.float() @ descriptors.float().T).clamp_min(0.0)
    similarity.fill_diagonal_(1.0)
    out = []
    for window in windows:
        top = similarity.topk(min(window, similarity.shape[0]), dim=1)
        weights = top.values / top.values.sum(dim=1, keepdim=True)
        out.append((weights * scores.float()[top.indices]).sum(dim=1))
    return torch.stack(out).mean(dim=0)


def interval_average(distances: torch.Tensor, fraction: float = DEFAULT_FRACTION) -> torch.Tensor:
    """``(G, N)`` distances to G groups -> ``(N,)``: mean of the smallest ``ceil(fraction x G)`` per patch."""
    count = max(1, math.ceil(fraction * distances.shape[0]))
    return distances.topk(count, dim=0, largest=False).values.mean(dim=0)


def grouped_scores(query: torch.Tensor, references: torch.Tensor, groups: Sequence[int],
                   fraction: float = DEFAULT_FRACTION, chunk: int = DEFAULT_CHUNK,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mutual patch scores of one image against its candidates, candidates of one group counting as one image.

    Args:
        query: ``(T, N, D)`` normalised features.
        references: ``(C, T, N', D)`` normalised features of the candidates.
        groups: ``(C,)`` group of each candidate (e.g. its scan): a group's distance is its members' smallest.
        fraction: interval-average share of the (grouped) candidates.
        chunk: candidate images per similarity block.
        dtype: of the similarity products (:func:`patch_distances`).

    Returns:
        ``(N,)`` float32 scores; zeros without candidates.
    """
    if references.shape[0] == 0:
        return torch.zeros(query.shape[1])
    distances = patch_distances(query, references, chunk, dtype)
    labels = torch.as_tensor(list(groups))
    grouped = torch.stack([distances[labels == label].amin(dim=0) for label in torch.unique(labels)])
    return interval_average(grouped, fraction)


def cohort_scores(features: torch.Tensor, candidates: Candidates, fraction: float = DEFAULT_FRACTION,
                  chunk: int = DEFAULT_CHUNK, progress: bool = True) -> torch.Tensor:
    """Mutual patch scores of every image of a cohort.

    Args:
        features: ``(M, T, N, D)`` normalised features (:func:`stack_features`), any storage
            that indexes like a tensor.
        candidates: groups each image is compared with (:func:`nearest_candidates`,
            :func:`position_candidates`).
        fraction: interval-average share.
        chunk: candidate images per similarity block.
        progress: show a progress bar.

    Returns:
        ``(M, N)`` float32 scores; an image without candidates scores 0.

    Raises:
        ValueError: for ``fraction`` outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    scores = torch.zeros(features.shape[0], features.shape[2])
    for index in tqdm(range(features.shape[0]), desc="cohort scoring", unit="img", disable=not progress):
        groups = [list(group) for group in candidates(index) if len(group)]
        if not groups:
            continue
        flat = [j for group in groups for j in group]
        distances = patch_distances(features[index], features[flat], chunk)
        grouped, start = [], 0
        for group in groups:
            grouped.append(distances[start:start + len(group)].amin(dim=0))
            start += len(group)
        scores[index] = interval_average(torch.stack(grouped), fraction)
    return scores


def robust_statistics(maps: torch.Tensor, sample: int = 1_000_000) -> tuple[float, float]:
    """``(median, 1.4826 x MAD)`` of all values of ``maps`` (of a seeded sample of ``sample`` values beyond that)."""
    flat = maps.reshape(-1).float()
    if flat.numel() > sample:
        flat = flat[torch.randint(flat.numel(), (sample,), generator=torch.Generator().manual_seed(0))]
    median = flat.median()
    return float(median), float((flat - median).abs().median().clamp_min(1e-12) * 1.4826)


def robust_standardise(maps: torch.Tensor, sample: int = 1_000_000) -> torch.Tensor:
    """``(maps - median) / (1.4826 x MAD)`` with the median and MAD of the whole cohort (:func:`robust_statistics`).

    Puts maps of different scorings on one scale: 0 is the cohort's typical value, 1 one robust
    standard deviation above it.
    """
    median, scale = robust_statistics(maps, sample)
    return (maps - median) / scale
