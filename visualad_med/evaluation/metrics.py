"""Threshold-free anomaly detection metrics of image scores: AUROC, AP, F1-max and curve points.

Image-level metrics take one score and one binary label per image. The exact
ranking they are computed from (:func:`_rank_positives`, :func:`_threshold_metrics`)
also serves the pixel-level metrics (:mod:`visualad_med.evaluation.pixel_metrics`)
and AUPRO (:mod:`visualad_med.evaluation.aupro`).

AUROC equals ``sklearn.metrics.roc_auc_score``, AP equals
``sklearn.metrics.average_precision_score`` and F1-max is the largest F1 over
the points of ``sklearn.metrics.precision_recall_curve`` (to 1e-9, tests/test_metrics.py).
Kept over sklearn: 30M voxels in 6.5 s / 682 MiB vs its 46.7 s / 1403 MiB (benchmarks/metrics_speed.py).
:func:`curve_points` keeps its own thresholds: sklearn's curves have a point per distinct score, uncapped.

Every metric is a fraction in [0, 1]. A metric the data cannot define (one
class missing) is ``float('nan')``, and a warning says why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "CurvePoints",
    "auroc",
    "average_precision",
    "curve_points",
    "f1_max",
    "image_metrics",
    "mean_row",
]

logger = logging.getLogger(__name__)


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
