"""Threshold-free anomaly detection metrics: AUROC, AP, F1-max and AUPRO.

Image-level metrics take one score and one binary label per image. Pixel-level
metrics are accumulated map by map with :class:`PixelMetricAccumulator`, which
keeps only what the exact computation needs (one 4-byte key per normal pixel,
one 8-byte key per anomalous pixel) and sorts once in ``compute()``: no
threshold grid, no sub-sampling, memory linear in the number of pixels.

AUROC equals ``sklearn.metrics.roc_auc_score``, AP equals
``sklearn.metrics.average_precision_score`` and F1-max is the largest F1 over
the points of ``sklearn.metrics.precision_recall_curve``.

AUPRO follows MVTec AD (Bergmann et al., "The MVTec Anomaly Detection Dataset",
IJCV 2021, and its evaluation code): regions are the 8-connected components of
each 2D ground-truth mask (``scipy.ndimage.label`` with a 3x3 structure of
ones); PRO(t) is the mean over all regions of all images of the fraction of the
region scored ``>= t``; FPR(t) is the fraction of all normal pixels scored
``>= t``; the (FPR, PRO) curve over every distinct score, starting at (0, 0),
is integrated with the trapezoid rule up to FPR = ``integration_limit`` (the
end point interpolated linearly) and divided by ``integration_limit``. Regions
are per 2D image, so a 3D lesion seen on several slices counts once per slice.

Every metric is a fraction in [0, 1]. A metric the data cannot define (one
class missing) is ``float('nan')``, and a warning says why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

__all__ = [
    "CurvePoints",
    "PixelMetricAccumulator",
    "aupro",
    "auroc",
    "average_precision",
    "curve_points",
    "f1_max",
    "image_metrics",
    "mean_row",
]

logger = logging.getLogger(__name__)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
TWENTY_SIX_CONNECTED = np.ones((3, 3, 3), dtype=bool)
"""Structure of 3D regions: voxels touching by a face, an edge or a corner are one region."""
_SIGN_BIT = np.uint32(0x80000000)
_LOW_WORD = np.uint64(0xFFFFFFFF)


class _Ranks(NamedTuple):
    """Sorted positive scores grouped by distinct value, ranked among negatives.

    Attributes:
        values: (K,) distinct positive scores, ascending.
        starts: (K,) index of each value's first occurrence in the sorted
            positives, i.e. the number of positives below it.
        counts: (K,) number of positives equal to each value.
        below: (K,) number of negatives strictly below each value.
        equal: (K,) number of negatives equal to each value.
    """

    values: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    below: np.ndarray
    equal: np.ndarray


def _rank_positives(neg_sorted: np.ndarray, pos_sorted: np.ndarray) -> _Ranks:
    """Rank each distinct positive score among the negative scores.

    Args:
        neg_sorted: (N0,) negative scores, ascending, N0 >= 1.
        pos_sorted: (N1,) positive scores, ascending, same dtype, N1 >= 1.

    Returns:
        The grouped positives and their ranks.
    """
    is_start = np.empty(pos_sorted.size, dtype=bool)
    is_start[0] = True
    np.not_equal(pos_sorted[1:], pos_sorted[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    del is_start
    values = pos_sorted[starts]
    counts = np.diff(starts, append=pos_sorted.size)
    below = np.searchsorted(neg_sorted, values, side="left")
    # Ties between classes are rare for continuous scores: search again only
    # for the values that do occur among the negatives.
    tied = below < neg_sorted.size
    tied[tied] = neg_sorted[below[tied]] == values[tied]
    equal = np.zeros_like(below)
    if tied.any():
        equal[tied] = np.searchsorted(neg_sorted, values[tied], side="right") - below[tied]
    return _Ranks(values, starts, counts, below, equal)


def _threshold_metrics(ranks: _Ranks, n_neg: int, n_pos: int) -> tuple[float, float, float]:
    """AUROC, AP and F1-max from ranked positives.

    AUROC is the Mann-Whitney statistic with ties counted half (the trapezoid
    area under the ROC curve); AP is sum over thresholds of recall increase
    times precision; F1-max is taken over thresholds at positive scores, where
    F1 = 2 TP / (TP + FP + N1) peaks (lower thresholds with the same TP only
    add false positives).

    Args:
        ranks: Output of :func:`_rank_positives`.
        n_neg: Number of negatives N0 >= 1.
        n_pos: Number of positives N1 >= 1.

    Returns:
        (auroc, ap, f1_max) as floats in [0, 1].
    """
    # Exact integer sum: sum_p (#neg < p) + (#neg <= p).
    wins = int(np.dot(ranks.counts, 2 * ranks.below + ranks.equal))
    auroc = wins / (2.0 * n_pos * n_neg)
    true_pos = n_pos - ranks.starts
    false_pos = n_neg - ranks.below
    precision = true_pos / (true_pos + false_pos)
    ap = float(np.dot(ranks.counts, precision)) / n_pos
    f1 = float(np.max(2 * true_pos / (true_pos + false_pos + n_pos)))
    return auroc, ap, f1


def _count_reaching(limit: float, total: int) -> int:
    """Smallest count k in [1, total] with k / total >= limit (float compare)."""
    k = max(1, math.ceil(limit * total))
    while k > 1 and (k - 1) / total >= limit:
        k -= 1
    while k / total < limit:
        k += 1
    return k


def _aupro(
    neg_sorted: np.ndarray,
    ranks: _Ranks,
    weights: np.ndarray,
    n_regions: int,
    limit: float,
) -> float:
    """Normalised area under the PRO curve up to FPR = ``limit``.

    Walking thresholds downwards, a segment of the curve moves right by
    (#normal pixels at the threshold) / N0 and up by (sum of 1 / |region| over
    anomalous pixels at the threshold) / R. Summed over the segments wholly
    left of ``limit`` the trapezoid areas reduce to one dot product over the
    distinct positive scores; the segment crossing ``limit`` is interpolated.

    Args:
        neg_sorted: (N0,) normal-pixel scores, ascending, N0 >= 1.
        ranks: Output of :func:`_rank_positives` for the anomalous pixels.
        weights: (K,) sum of 1 / |region| over the anomalous pixels at each
            distinct value of ``ranks.values``.
        n_regions: Number of ground-truth regions R >= 1.
        limit: FPR integration limit in (0, 1].

    Returns:
        AUPRO in [0, 1].
    """
    n_neg = neg_sorted.size
    # The threshold at which FPR first reaches the limit.
    cut = neg_sorted[n_neg - _count_reaching(limit, n_neg)]
    neg_below_cut = int(np.searchsorted(neg_sorted, cut, side="left"))
    neg_upto_cut = int(np.searchsorted(neg_sorted, cut, side="right"))
    first_above = int(np.searchsorted(ranks.values, cut, side="right"))

    above = slice(first_above, None)
    # Normal pixels strictly between the cut and each value, ties counted half.
    spans = (ranks.below[above] - neg_upto_cut) + 0.5 * ranks.equal[above]
    area = float(np.dot(weights[above], spans)) / (n_neg * n_regions)

    fpr_prev = (n_neg - neg_upto_cut) / n_neg
    pro_prev = float(np.sum(weights[above])) / n_regions
    pro_step = 0.0
    if first_above > 0 and ranks.values[first_above - 1] == cut:
        pro_step = float(weights[first_above - 1]) / n_regions
    fpr_step = (neg_upto_cut - neg_below_cut) / n_neg
    width = limit - fpr_prev
    pro_at_limit = pro_prev + pro_step * width / fpr_step
    area += 0.5 * width * (pro_prev + pro_at_limit)
    return area / limit


def _as_bool(labels: np.ndarray, name: str) -> np.ndarray:
    """Return ``labels`` as bool, checking that it holds only 0 and 1."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels
    if not np.all((labels == 0) | (labels == 1)):
        found = np.unique(labels)[:5].tolist()
        raise ValueError(f"{name} must be boolean or contain only 0 and 1, found values {found}")
    return labels.astype(bool)


def _check_finite(scores: np.ndarray, name: str) -> None:
    """Raise ValueError if ``scores`` holds NaN or infinite values."""
    bad = scores.size - int(np.count_nonzero(np.isfinite(scores)))
    if bad:
        raise ValueError(f"{name} contains {bad} non-finite values (NaN or inf)")


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Image-level AUROC, AP and F1-max.

    Args:
        scores: (N,) anomaly scores, higher meaning more anomalous.
        labels: (N,) ground truth, True (or 1) for anomalous.

    Returns:
        Dict with keys ``image_auroc``, ``image_ap``, ``image_f1_max``; all NaN
        (with a warning) unless both classes are present.

    Raises:
        ValueError: If the shapes differ, are not 1-D, or a score is not finite.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = _as_bool(labels, "labels")
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"scores and labels must be 1-D of equal length, got shapes {scores.shape} and {labels.shape}"
        )
    _check_finite(scores, "scores")
    neg = np.sort(scores[~labels])
    pos = np.sort(scores[labels])
    if neg.size == 0 or pos.size == 0:
        logger.warning(
            "AUROC, AP and F1-max are undefined with %d anomalous and %d normal samples "
            "(both classes are needed); returning NaN",
            pos.size,
            neg.size,
        )
        values = (math.nan, math.nan, math.nan)
    else:
        values = _threshold_metrics(_rank_positives(neg, pos), neg.size, pos.size)
    return dict(zip(("image_auroc", "image_ap", "image_f1_max"), values))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve, as ``sklearn.metrics.roc_auc_score``.

    Args:
        scores: (N,) anomaly scores, higher meaning more anomalous.
        labels: (N,) ground truth, True (or 1) for anomalous.

    Returns:
        AUROC in [0, 1], or NaN (with a warning) if a class is missing.
    """
    return image_metrics(scores, labels)["image_auroc"]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision, as ``sklearn.metrics.average_precision_score``.

    Args:
        scores: (N,) anomaly scores, higher meaning more anomalous.
        labels: (N,) ground truth, True (or 1) for anomalous.

    Returns:
        AP in [0, 1], or NaN (with a warning) if a class is missing. Without
        normal samples AP would be 1 whatever the scores, so it is NaN too.
    """
    return image_metrics(scores, labels)["image_ap"]


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Largest F1 over all thresholds of the precision-recall curve.

    Args:
        scores: (N,) anomaly scores, higher meaning more anomalous.
        labels: (N,) ground truth, True (or 1) for anomalous.

    Returns:
        F1-max in [0, 1], or NaN (with a warning) if a class is missing.
    """
    return image_metrics(scores, labels)["image_f1_max"]


class CurvePoints(NamedTuple):
    """Points of the ROC and precision-recall curves, for plotting.

    Each index is one threshold, thresholds descending; ``fpr`` and ``recall``
    (= TPR) ascend. The ROC curve runs from (0, 0), implied, to (1, 1).

    Attributes:
        fpr: (K,) false-positive rate at each threshold.
        tpr: (K,) true-positive rate (recall) at each threshold.
        precision: (K,) precision at each threshold.
        prevalence: fraction of positives, the precision of a random scorer.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    prevalence: float


def _curve_points(neg_sorted: np.ndarray, pos_sorted: np.ndarray, max_points: int) -> CurvePoints:
    """Exact curve points at up to ``max_points`` thresholds (quantiles of both classes).

    Thresholds are the scores at evenly spaced ranks of the negatives and of
    the positives (every score when a class has fewer than ``max_points // 2``),
    so both axes are sampled evenly; each point is exact for its threshold.

    Args:
        neg_sorted: (N0,) negative scores (or sortable keys), ascending, N0 >= 1.
        pos_sorted: (N1,) positive scores of the same dtype, ascending, N1 >= 1.
        max_points: Largest number of thresholds, >= 2.

    Returns:
        The curve points.
    """
    per_class = max(1, max_points // 2)
    picks = [
        values[np.unique(np.linspace(0, values.size - 1, min(per_class, values.size)).round().astype(np.int64))]
        for values in (neg_sorted, pos_sorted)
    ]
    thresholds = np.unique(np.concatenate(picks))[::-1]
    true_pos = pos_sorted.size - np.searchsorted(pos_sorted, thresholds, side="left")
    false_pos = neg_sorted.size - np.searchsorted(neg_sorted, thresholds, side="left")
    return CurvePoints(
        fpr=false_pos / neg_sorted.size,
        tpr=true_pos / pos_sorted.size,
        precision=true_pos / (true_pos + false_pos),
        prevalence=pos_sorted.size / (pos_sorted.size + neg_sorted.size),
    )


def _check_max_points(max_points: int) -> None:
    """Raise ValueError unless ``max_points`` is an int >= 2."""
    if not isinstance(max_points, int) or max_points < 2:
        raise ValueError(f"max_points must be an int >= 2, got {max_points!r}")


def curve_points(scores: np.ndarray, labels: np.ndarray, max_points: int = 1000) -> CurvePoints | None:
    """ROC and precision-recall curve points of image-level scores, for plotting.

    Args:
        scores: (N,) anomaly scores, higher meaning more anomalous.
        labels: (N,) ground truth, True (or 1) for anomalous.
        max_points: Largest number of thresholds (every distinct score below it).

    Returns:
        The points, or None unless both classes are present.

    Raises:
        ValueError: If the shapes differ, are not 1-D, a score is not finite,
            or ``max_points`` < 2.
    """
    _check_max_points(max_points)
    scores = np.asarray(scores, dtype=np.float64)
    labels = _as_bool(labels, "labels")
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"scores and labels must be 1-D of equal length, got shapes {scores.shape} and {labels.shape}"
        )
    _check_finite(scores, "scores")
    neg, pos = np.sort(scores[~labels]), np.sort(scores[labels])
    if neg.size == 0 or pos.size == 0:
        return None
    return _curve_points(neg, pos, max_points)


def _sortable_keys(scores: np.ndarray) -> np.ndarray:
    """Map float32 scores to uint32 keys that sort in the same order.

    Args:
        scores: float32 array of finite scores, any shape.

    Returns:
        uint32 array of the same shape; ``-0.0`` and ``0.0`` get the same key.
    """
    bits = (scores + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 == +0.0
    return np.where(bits >= _SIGN_BIT, ~bits, bits | _SIGN_BIT)


class _BlockBuffer:
    """Append-only 1-D array kept in large blocks and merged on demand.

    Blocks are big enough (64 MiB) for the C allocator to map them straight
    from the operating system, so each block released while merging is
    returned at once: merging N values peaks near N values plus one block,
    where a list of small chunks and ``np.concatenate`` would hold 2 N.

    Args:
        dtype: Element type.
    """

    _BLOCK_BYTES = 64 * 2**20

    def __init__(self, dtype: type) -> None:
        self.dtype = np.dtype(dtype)
        self._block_len = self._BLOCK_BYTES // self.dtype.itemsize
        self._blocks: list[np.ndarray] = []
        self._free = 0
        self.size = 0

    def append(self, values: np.ndarray) -> None:
        """Copy the 1-D array ``values`` to the end of the buffer."""
        done = 0
        while done < values.size:
            if self._free == 0:
                self._blocks.append(np.empty(self._block_len, dtype=self.dtype))
                self._free = self._block_len
            block = self._blocks[-1]
            start = block.size - self._free
            count = min(self._free, values.size - done)
            block[start : start + count] = values[done : done + count]
            self._free -= count
            done += count
        self.size += values.size

    def merged(self) -> np.ndarray:
        """Return all values as one array that the caller may reorder in place.

        Returns:
            (size,) array, owned by the buffer, valid until the next append.
        """
        if len(self._blocks) != 1 or self._free:
            fills = [block.size for block in self._blocks]
            if fills:
                fills[-1] -= self._free
            out = np.empty(self.size, dtype=self.dtype)
            end = self.size
            for fill in reversed(fills):
                block = self._blocks.pop()
                out[end - fill : end] = block[:fill]
                end -= fill
                del block
            self._blocks, self._free = [out], 0
        return self._blocks[0]


class PixelMetricAccumulator:
    """Exact pixel-level AUROC, AP, F1-max and AUPRO, fed map by map.

    Scores are stored as float32 (maps of another dtype are cast, which can
    merge scores closer than float32 resolution). Normal pixels cost 4 bytes,
    anomalous pixels 8 bytes (score and region size); ``compute()`` needs about
    as much again for anomalous pixels, and sorts the normal pixels in place.

    Args:
        integration_limit: FPR up to which the PRO curve is integrated, in
            (0, 1]; 0.3 as in MVTec AD.

    Raises:
        ValueError: If ``integration_limit`` is outside (0, 1].
    """

    def __init__(self, integration_limit: float = 0.3) -> None:
        if not 0.0 < integration_limit <= 1.0:
            raise ValueError(f"integration_limit must be in (0, 1], got {integration_limit}")
        self.integration_limit = float(integration_limit)
        self.reset()

    def reset(self) -> None:
        """Forget every pixel seen so far."""
        self._normal = _BlockBuffer(np.uint32)
        self._anomalous = _BlockBuffer(np.uint64)
        self._n_regions = 0

    @property
    def num_pixels(self) -> int:
        """Number of pixels accumulated so far."""
        return self._normal.size + self._anomalous.size

    def update(self, maps: np.ndarray, masks: np.ndarray) -> None:
        """Add a batch of anomaly maps and their ground-truth masks.

        Args:
            maps: (B, H, W) anomaly scores, higher meaning more anomalous.
            masks: (B, H, W) ground truth, True (or 1) for anomalous pixels.

        Raises:
            ValueError: If the shapes differ or are not 3-D, a mask is not
                binary, or a score is not finite as float32.
        """
        maps = np.asarray(maps)
        if maps.ndim != 3:
            raise ValueError(f"maps must have shape (B, H, W), got {maps.shape}")
        masks = _as_bool(masks, "masks")
        if masks.shape != maps.shape:
            raise ValueError(f"masks shape {masks.shape} differs from maps shape {maps.shape}")
        if maps.shape[1] * maps.shape[2] > int(_LOW_WORD):
            raise ValueError(f"maps of {maps.shape[1]}x{maps.shape[2]} pixels are too large (limit 2**32 - 1)")
        scores = maps.astype(np.float32, copy=False)
        _check_finite(scores, "maps (as float32)")
        keys = _sortable_keys(scores)
        self._normal.append(keys[~masks])
        for image_keys, mask in zip(keys, masks):
            if mask.any():
                self._add_regions(image_keys, mask, _EIGHT_CONNECTED)

    def update_volume(self, volume_map: np.ndarray, volume_mask: np.ndarray) -> None:
        """Add one 3D map whose regions are the 26-connected components of its 3D mask.

        The volume counterpart of :meth:`update`: a lesion seen on several slices is one region.

        Args:
            volume_map: (X, Y, Z) anomaly scores.
            volume_mask: (X, Y, Z) ground truth, True (or 1) for anomalous voxels.

        Raises:
            ValueError: If the shapes differ or are not 3-D, the mask is not binary, or a score
                is not finite as float32.
        """
        volume_map = np.asarray(volume_map)
        mask = _as_bool(volume_mask, "volume_mask")
        if volume_map.ndim != 3 or mask.shape != volume_map.shape:
            raise ValueError(f"volume_map and volume_mask must be 3-D of one shape, got {volume_map.shape} "
                             f"and {mask.shape}")
        scores = volume_map.astype(np.float32, copy=False)
        _check_finite(scores, "volume_map (as float32)")
        keys = _sortable_keys(scores)
        self._normal.append(keys[~mask])
        if mask.any():
            self._add_regions(keys, mask, TWENTY_SIX_CONNECTED)

    def _add_regions(self, keys: np.ndarray, mask: np.ndarray, structure: np.ndarray) -> None:
        """Store the anomalous pixels of one image (or volume) with their region sizes.

        Args:
            keys: (H, W) or (X, Y, Z) uint32 score keys.
            mask: bool ground truth of the same shape with at least one True pixel.
            structure: connectivity of a region (``scipy.ndimage.label``).
        """
        labelled, n_regions = ndimage.label(mask, structure=structure)
        region = labelled[mask]
        sizes = np.bincount(region, minlength=n_regions + 1).astype(np.uint64)
        self._anomalous.append((keys[mask].astype(np.uint64) << np.uint64(32)) | sizes[region])
        self._n_regions += n_regions

    def compute(self) -> dict[str, float]:
        """Compute the metrics over every pixel accumulated so far.

        The accumulator keeps its data, so more updates may follow.

        Returns:
            Dict with keys ``pixel_auroc``, ``pixel_ap``, ``pixel_f1_max`` and
            ``pixel_aupro``; all NaN (with a warning) unless both normal and
            anomalous pixels were seen.

        Raises:
            ValueError: If no pixel was accumulated.
        """
        if self.num_pixels == 0:
            raise ValueError("PixelMetricAccumulator is empty: call update() with at least one map before compute()")
        keys = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
        if self._normal.size == 0 or self._anomalous.size == 0:
            logger.warning(
                "pixel AUROC, AP, F1-max and AUPRO are undefined with %d anomalous and %d normal "
                "pixels (both classes are needed); returning NaN",
                self._anomalous.size,
                self._normal.size,
            )
            return dict.fromkeys(keys, math.nan)
        normal = self._normal.merged()
        normal.sort()
        anomalous = self._anomalous.merged()
        anomalous.sort()
        ranks = _rank_positives(normal, (anomalous >> np.uint64(32)).astype(np.uint32))
        auroc_, ap, f1 = _threshold_metrics(ranks, normal.size, anomalous.size)
        inverse_sizes = 1.0 / (anomalous & _LOW_WORD).astype(np.float64)
        weights = np.add.reduceat(inverse_sizes, ranks.starts)
        del inverse_sizes
        aupro_ = _aupro(normal, ranks, weights, self._n_regions, self.integration_limit)
        return dict(zip(keys, (auroc_, ap, f1, aupro_)))

    def curve_points(self, max_points: int = 1000) -> CurvePoints | None:
        """Pixel-level ROC and precision-recall curve points, for plotting.

        Sorts the stored pixels like :meth:`compute` (in place, data kept).

        Args:
            max_points: Largest number of thresholds (quantiles of the normal
                and of the anomalous pixel scores).

        Returns:
            The points, or None unless both normal and anomalous pixels were seen.

        Raises:
            ValueError: If ``max_points`` < 2.
        """
        _check_max_points(max_points)
        if self._normal.size == 0 or self._anomalous.size == 0:
            return None
        normal = self._normal.merged()
        normal.sort()
        anomalous = self._anomalous.merged()
        anomalous.sort()
        return _curve_points(normal, (anomalous >> np.uint64(32)).astype(np.uint32), max_points)


def aupro(maps: np.ndarray, masks: np.ndarray, integration_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to FPR = ``integration_limit``.

    One-shot form of :class:`PixelMetricAccumulator` for maps already in
    memory; see the module docstring for the definition.

    Args:
        maps: (B, H, W) anomaly scores, higher meaning more anomalous.
        masks: (B, H, W) ground truth, True (or 1) for anomalous pixels.
        integration_limit: FPR integration limit in (0, 1].

    Returns:
        AUPRO in [0, 1], or NaN (with a warning) without anomalous or normal pixels.
    """
    accumulator = PixelMetricAccumulator(integration_limit)
    accumulator.update(maps, masks)
    return accumulator.compute()["pixel_aupro"]


def mean_row(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric across rows (e.g. one row per class), ignoring NaN.

    Args:
        rows: Metric dicts; a key missing from a row counts as NaN there.

    Returns:
        Dict with every key of ``rows`` (in order of first appearance) mapped
        to the mean of its non-NaN values, or NaN if it has none.

    Raises:
        ValueError: If ``rows`` is empty.
    """
    if not rows:
        raise ValueError("mean_row needs at least one row, got none")
    names = list(dict.fromkeys(name for row in rows for name in row))
    means = {}
    for name in names:
        values = [float(row[name]) for row in rows if name in row and not math.isnan(row[name])]
        means[name] = math.fsum(values) / len(values) if values else math.nan
    return means
