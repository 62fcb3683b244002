"""AUPRO: the normalised area under the per-region overlap (PRO) curve, and the region structures.

AUPRO follows MVTec AD (Bergmann et al., "The MVTec Anomaly Detection Dataset",
IJCV 2021, and its evaluation code): regions are the 8-connected components of
each 2D ground-truth mask (``scipy.ndimage.label`` with a 3x3 structure of
ones); PRO(t) is the mean over all regions of all images of the fraction of the
region scored ``>= t``; FPR(t) is the fraction of all normal pixels scored
``>= t``; the (FPR, PRO) curve over every distinct score, starting at (0, 0),
is integrated with the trapezoid rule up to FPR = ``integration_limit`` (the
end point interpolated linearly) and divided by ``integration_limit``. Regions
are per 2D image, so a 3D lesion seen on several slices counts once per slice;
volumes use :data:`TWENTY_SIX_CONNECTED` regions instead. The pixels are accumulated by
:class:`~visualad_med.evaluation.pixel_metrics.PixelMetricAccumulator`.
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import _Ranks

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
TWENTY_SIX_CONNECTED = np.ones((3, 3, 3), dtype=bool)
"""Structure of 3D regions: voxels touching by a face, an edge or a corner are one region."""


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

