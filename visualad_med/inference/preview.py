"""A scan's quick-look PNG: three slices through where its map peaks inside the body.

The peak is the map's largest value over body voxels (windowed intensity above 10 % of the
volume's brightest, :func:`~visualad_med.model.body_reference.volume_body_mask`) in slices the
model ran, leaving out, along each sliced axis, the first and last :data:`END_MARGIN` of the
slices that hold body: an end slice holds a sliver of the body (on CQ500 the skull cap), where
the map peaks on the edge of the head, not on a finding. Drawn by
:func:`~visualad_med.io.quick_look.save_quick_look`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from visualad_med.io.layout import argmax_index, array_order
from visualad_med.io.quick_look import save_quick_look
from visualad_med.model.body_reference import volume_body_mask

if TYPE_CHECKING:
    from .scan import ScanResult

END_MARGIN = 0.05
"""Share of the body's extent along a sliced axis left out at each end (at least one slice)."""


def preview_focus(anomaly: np.ndarray, body: np.ndarray, sliced_axes: tuple[int, ...]) -> tuple[int, int, int]:
    """The ``(i, j, k)`` voxel of the map's maximum inside ``body``, away from the body's end slices.

    Args:
        anomaly: ``(X, Y, Z)`` map.
        body: ``(X, Y, Z)`` bool, where the peak may lie.
        sliced_axes: array axes the model sliced along; on each, the first and last
            ``max(1, ceil(END_MARGIN * n))`` of the ``n`` slices holding body are left out.

    Falls back to the whole body when the margins leave nothing, then to the whole volume. The
    inner region is a box of slices (views of the arrays) intersected with ``body``.
    """
    box = [slice(None)] * 3
    for axis in sliced_axes:
        holding = np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))
        if holding.size:
            margin = max(1, math.ceil(END_MARGIN * (holding[-1] - holding[0] + 1)))
            box[axis] = slice(int(holding[0]) + margin, max(int(holding[-1]) - margin + 1, int(holding[0]) + margin))
    for region in (tuple(box), (slice(None),) * 3):
        inside, values = body[region], anomaly[region]
        if inside.any():
            highest = np.max(values, where=inside, initial=-np.inf)
            peak = argmax_index((values == highest) & inside)  # bool temporaries, no float copy of the map
            return tuple(i + (cut.start or 0) for i, cut in zip(peak, region))
    return argmax_index(anomaly)


def write_preview(result: ScanResult, path: Path) -> Path:
    """The quick look of ``result`` (scan, map over the body, mask contour, scores in the title) as PNG."""
    scan = result.scan
    window = (scan.window.low, scan.window.high)
    volume = scan.volume[0].as_tensor()
    anomaly = result.anomaly.numpy()
    body = volume_body_mask(volume, window)
    body &= result.ran
    body = body.numpy()
    focus = preview_focus(anomaly, body, tuple(result.scores.run_slices))
    order = array_order(anomaly)  # the body's too (both follow the scan): flat views, no copy
    flat = anomaly.ravel(order=order)
    inside = flat[body.ravel(order=order)] if body.any() else flat.copy()
    high = float(inside.max())
    low = float(np.median(inside, overwrite_input=True))  # our copy: partitioned in place
    scores = result.scan_scores
    max_slice = "none" if scores["max_slice_score"] is None else f"{scores['max_slice_score']:.3f}"
    title = (f"{scan.source.name}: score {scores['top1pct_mean']:.3f} (mean of the top 1 % of the map), "
             f"max slice score {max_slice}, threshold {result.threshold:.3f}\n"
             f"cross: the map's maximum in the body, {anomaly[focus]:.3f}, at voxel {list(focus)}")
    return save_quick_look(volume.numpy(), anomaly, result.mask.numpy(), body, scan.volume.affine.numpy(), focus,
                           window, (low, max(high, low + 1e-6)), title, path)
