"""Voxel metrics of a whole cohort in bounded memory: AUROC, AP, F1-max and AUPRO from score histograms.

:class:`~visualad_med.evaluation.pixel_metrics.PixelMetricAccumulator` is exact but keeps 4 bytes
per voxel: 100 CT volumes of 512 x 512 x 300 would need 31 GB. A cohort is
pooled here instead in fixed histograms over the float32 score: the bin of a
score is the top :data:`BIN_BITS` bits of its order-preserving 32-bit key (sign,
exponent and 11 mantissa bits, a relative resolution of 2**-11 ~ 5e-4), so
memory is ``3 x 2**BIN_BITS x 8`` bytes (24 MiB) whatever the cohort's size.
Scores within one bin count as tied, which is the only difference from the
exact metrics (tested to agree within 1e-3 on continuous maps). Written by
hand because neither scikit-learn nor MONAI has a streaming, fixed-memory ROC/PR
with region-weighted PRO.

AUPRO regions are whatever the caller labels (26-connected per volume here, see
:func:`region_weights`), each weighing 1 / its size per voxel, as in
:mod:`visualad_med.evaluation.aupro`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .aupro import TWENTY_SIX_CONNECTED
from .metrics import CurvePoints
from .pixel_metrics import _sortable_keys

BIN_BITS = 20
"""Histogram resolution: bins are the top 20 bits of the 32-bit score key."""

_SHIFT = np.uint32(32 - BIN_BITS)


def region_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``1 / size`` of the 26-connected region of each anomalous voxel, and the number of regions.

    Args:
        mask: (X, Y, Z) bool ground truth.

    Returns:
        ``(weights, regions)``: ``weights`` (M,) float64 in the order of ``mask``'s True voxels.
    """
    labelled, regions = ndimage.label(mask, structure=TWENTY_SIX_CONNECTED)
    region = labelled[mask]
    sizes = np.bincount(region, minlength=regions + 1).astype(np.float64)
    return 1.0 / sizes[region], regions


class BinnedVoxelMetrics:
    """Pooled voxel AUROC, AP, F1-max and AUPRO over any number of volumes, in fixed memory.

    Args:
        integration_limit: FPR up to which the PRO curve is integrated, in (0, 1].
    """

    def __init__(self, integration_limit: float = 0.3) -> None:
        if not 0.0 < integration_limit <= 1.0:
            raise ValueError(f"integration_limit must be in (0, 1], got {integration_limit}")
        self.integration_limit = float(integration_limit)
        self.normal = np.zeros(1 << BIN_BITS, dtype=np.int64)
        self.anomalous = np.zeros(1 << BIN_BITS, dtype=np.int64)
        self.region_weight = np.zeros(1 << BIN_BITS, dtype=np.float64)
        self.regions = 0

    def update(self, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
               regions: int = 0) -> None:
        """Add voxels.

        Args:
            scores: any shape, finite anomaly scores (cast to float32).
            labels: bool of ``scores``' shape, True for anomalous voxels.
            weights: (number of anomalous voxels,) ``1 / region size`` of each, in ``labels``'
                order (:func:`region_weights`); ``None`` leaves AUPRO out for these voxels.
            regions: regions those weights belong to.
        """
        keys = _sortable_keys(np.asarray(scores, dtype=np.float32)) >> _SHIFT
        labels = np.asarray(labels, dtype=bool)
        self.normal += np.bincount(keys[~labels], minlength=self.normal.size)
        anomalous = keys[labels]
        self.anomalous += np.bincount(anomalous, minlength=self.anomalous.size)
        if weights is not None:
            self.region_weight += np.bincount(anomalous, weights=weights, minlength=self.region_weight.size)
            self.regions += int(regions)

    def _descending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normal counts, anomalous counts and region weights of the non-empty bins, highest score first."""
        used = np.flatnonzero((self.normal + self.anomalous) > 0)[::-1]
        return self.normal[used], self.anomalous[used], self.region_weight[used]

    def compute(self) -> dict[str, float]:
        """``voxel_auroc``, ``voxel_ap``, ``voxel_f1_max`` (= best Dice over thresholds), ``voxel_aupro``.

        Each is NaN unless both normal and anomalous voxels were seen (AUPRO also needs regions).
        """
        names = ("voxel_auroc", "voxel_ap", "voxel_f1_max", "voxel_aupro")
        normal, anomalous, weight = self._descending()
        n_neg, n_pos = int(normal.sum()), int(anomalous.sum())
        if n_neg == 0 or n_pos == 0:
            return dict.fromkeys(names, math.nan)
        false_pos, true_pos = np.cumsum(normal), np.cumsum(anomalous)
        below = n_neg - false_pos  # normal voxels strictly below each bin
        auroc = float(np.dot(anomalous, 2 * below + normal)) / (2.0 * n_pos * n_neg)
        scored = anomalous > 0
        precision = true_pos[scored] / (true_pos[scored] + false_pos[scored])
        ap = float(np.dot(anomalous[scored], precision)) / n_pos
        f1 = float(np.max(2 * true_pos / (true_pos + false_pos + n_pos)))
        aupro = self._aupro(false_pos / n_neg, np.cumsum(weight) / self.regions) if self.regions else math.nan
        return dict(zip(names, (auroc, ap, f1, aupro)))

    def _aupro(self, fpr: np.ndarray, pro: np.ndarray) -> float:
        """Trapezoid area of the (FPR, PRO) curve from (0, 0) to FPR = limit (interpolated), over the limit."""
        fpr, pro = np.r_[0.0, fpr], np.r_[0.0, pro]
        limit = self.integration_limit
        inside = int(np.searchsorted(fpr, limit, side="left"))
        if inside < fpr.size:
            step = fpr[inside] - fpr[inside - 1]
            share = (limit - fpr[inside - 1]) / step if step > 0 else 1.0
            end = pro[inside - 1] + share * (pro[inside] - pro[inside - 1])
            fpr, pro = np.r_[fpr[:inside], limit], np.r_[pro[:inside], end]
        return float(np.trapezoid(pro, fpr)) / limit

    def curve_points(self, max_points: int = 1000) -> CurvePoints | None:
        """ROC and PR points at up to ``max_points`` bin edges (evenly spread in rank), for plotting."""
        normal, anomalous, _ = self._descending()
        n_neg, n_pos = int(normal.sum()), int(anomalous.sum())
        if n_neg == 0 or n_pos == 0:
            return None
        false_pos, true_pos = np.cumsum(normal), np.cumsum(anomalous)
        rank = (false_pos / n_neg + true_pos / n_pos) / 2
        picks = np.unique(np.searchsorted(rank, np.linspace(0, 1, max_points), side="left").clip(0, rank.size - 1))
        return CurvePoints(fpr=false_pos[picks] / n_neg, tpr=true_pos[picks] / n_pos,
                           precision=true_pos[picks] / (true_pos[picks] + false_pos[picks]),
                           prevalence=n_pos / (n_pos + n_neg))
