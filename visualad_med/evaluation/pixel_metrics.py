"""Exact pixel-level AUROC, AP, F1-max and AUPRO, accumulated map by map.

:class:`PixelMetricAccumulator` keeps only what the exact computation needs
(one 4-byte key per normal pixel, one 8-byte key per anomalous pixel) and
sorts once in ``compute()``: no threshold grid, no sub-sampling, memory linear
in the number of pixels. The metrics are those of
:mod:`visualad_med.evaluation.metrics` over pixels, and AUPRO as defined in
:mod:`visualad_med.evaluation.aupro` (regions per 2D image, or per volume with
:meth:`PixelMetricAccumulator.update_volume`).

Every metric is a fraction in [0, 1]. A metric the data cannot define (one
class missing) is ``float('nan')``, and a warning says why.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from .aupro import _EIGHT_CONNECTED, TWENTY_SIX_CONNECTED, _aupro
from .metrics import (
    CurvePoints,
    _as_bool,
    _check_finite,
    _check_max_points,
    _curve_points,
    _rank_positives,
    _threshold_metrics,
)

__all__ = ["PixelMetricAccumulator", "aupro"]

logger = logging.getLogger(__name__)

_SIGN_BIT = np.uint32(0x80000000)
_LOW_WORD = np.uint64(0xFFFFFFFF)


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
    memory; :mod:`visualad_med.evaluation.aupro` has the definition.

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
