"""Which slices of a cohort a slice is compared with: its nearest neighbours by global descriptor.

Each slice of a volume cohort is compared with a fixed number ``K`` of slices of *other* scans, the
ones whose global descriptor (normalised mean last-layer patch token,
:func:`~visualad_med.model.mutual.global_descriptors`) is most similar: slices of the same
anatomy, whatever their index in their scan. So the cost per slice is that of ``K`` comparisons
whatever the size of the cohort. An optional position prior keeps only candidates within a given
difference of normalised slice position (``index / (slices - 1)``).

The search is FAISS's (inner product on normalised descriptors = cosine): an exact flat index up to
:data:`EXACT_LIMIT` descriptors, an HNSW graph beyond (its recall against exact search is measured
by ``benchmarks/bench_cohort.py``). A cohort of a single scan falls back to the same scan's slices
at least :data:`SAME_SCAN_GAP` of its length away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_CANDIDATES = 32
"""Candidate slices per slice (see the model card's sweep of K)."""
EXACT_LIMIT = 200_000
"""Largest cohort (in slices) searched exactly; HNSW beyond."""
SAME_SCAN_GAP = 0.2
"""A cohort of one scan: smallest normalised position difference of a candidate slice of the same scan."""
_HNSW_NEIGHBOURS = 32
_HNSW_SEARCH_DEPTH = 256


@dataclass(frozen=True)
class SliceCandidates:
    """The candidates of every slice of a cohort.

    Attributes:
        indices: ``(M, K)`` int64 cohort slice indices, most similar first; ``-1`` pads rows with
            fewer than ``K`` candidates.
        fallback_same_scan: True when the cohort is one scan (candidates from that scan).
    """

    indices: np.ndarray
    fallback_same_scan: bool

    def of(self, index: int) -> np.ndarray:
        """The candidate slice indices of slice ``index`` (padding removed)."""
        row = self.indices[index]
        return row[row >= 0]


def descriptor_index(descriptors: np.ndarray, exact_limit: int = EXACT_LIMIT):
    """A FAISS inner-product index over ``(M, D)`` normalised float32 descriptors (exact up to ``exact_limit``)."""
    import faiss

    data = np.ascontiguousarray(descriptors, dtype=np.float32)
    if data.shape[0] <= exact_limit:
        index = faiss.IndexFlatIP(data.shape[1])
    else:
        index = faiss.IndexHNSWFlat(data.shape[1], _HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = _HNSW_SEARCH_DEPTH
    index.add(data)
    return index


def nearest_slices(descriptors: np.ndarray, scan_of: np.ndarray, position: np.ndarray, count: int = DEFAULT_CANDIDATES,
                   position_prior: float | None = None, exact_limit: int = EXACT_LIMIT) -> SliceCandidates:
    """For each slice, the ``count`` most similar slices of other scans.

    Args:
        descriptors: ``(M, D)`` normalised global descriptors of the cohort's slices.
        scan_of: ``(M,)`` scan number of each slice.
        position: ``(M,)`` normalised slice position in its scan.
        count: ``K``, candidates per slice.
        position_prior: keep only candidates within this position difference (``None``: any).
        exact_limit: cohorts of more slices are searched with HNSW.

    Returns:
        The candidates; ties are broken by FAISS's order (cohort index), so the result is
        deterministic for a given cohort order.
    """
    scan_of, position = np.asarray(scan_of), np.asarray(position, dtype=np.float64)
    total = descriptors.shape[0]
    single = np.unique(scan_of).size == 1
    index = descriptor_index(descriptors, exact_limit)
    out = np.full((total, count), -1, dtype=np.int64)
    wanted = count
    todo = np.arange(total)
    while todo.size:
        fetch = min(total, wanted * 4 + 16)
        _, found = index.search(np.ascontiguousarray(descriptors[todo], dtype=np.float32), fetch)
        short = []
        for row, query in zip(found, todo):
            keep = row[row >= 0]
            if single:
                keep = keep[np.abs(position[keep] - position[query]) >= SAME_SCAN_GAP]
            else:
                keep = keep[scan_of[keep] != scan_of[query]]
            if position_prior is not None:
                keep = keep[np.abs(position[keep] - position[query]) <= position_prior]
            if keep.size < count and fetch < total:
                short.append(query)
                continue
            out[query, :min(count, keep.size)] = keep[:count]
        todo, wanted = np.asarray(short, dtype=np.int64), wanted * 4
    return SliceCandidates(out, single)
