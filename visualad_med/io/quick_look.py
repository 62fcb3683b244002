"""A scan's quick look: three orthogonal slices through one voxel, the map over the scan, saved as PNG.

Drawn with matplotlib's object API (a :class:`~matplotlib.figure.Figure` rendered by Agg, no
pyplot state), so several scans can be drawn at once from threads. The volumes are shown in the
closest RAS orientation of their affine (axes permuted and flipped, never resampled), in the
radiological convention 3D Slicer uses: axial and coronal slices with the patient's right on the
left, sagittal slices with anterior on the left, superior and anterior at the top; pixels keep
their aspect in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.colors
import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from .atomic import atomic_path

__all__ = ["VIEWS", "save_quick_look"]

COLORMAP = "jet"
MAP_ALPHA = 0.45
"""Opacity of the map over the scan (inside the body; outside it the scan shows alone)."""

VIEWS = ("axial", "coronal", "sagittal")
"""The three panels, left to right."""

_PANELS = {"left": 0.005, "right": 0.925, "bottom": 0.02, "top": 0.84, "wspace": 0.02}
"""Where the three panels sit in the figure (fractions of its width and height), under the two-line title."""
_COLOUR_BAR = (0.935, 0.1, 0.012, 0.68)
"""The colour bar's axes: left, bottom, width, height (fractions of the figure), right of the panels."""

_VIEW_AXES = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}
"""RAS axes of each view: (across the screen, up the screen, through the slice); across < up in each."""
_EDGE_LETTERS = {"axial": ("R", "L", "A"), "coronal": ("R", "L", "S"), "sagittal": ("A", "P", "S")}
"""Each view's orientation letters: screen left, screen right, screen top."""


def save_quick_look(
    scan: np.ndarray,
    anomaly: np.ndarray,
    mask: np.ndarray,
    body: np.ndarray,
    affine: np.ndarray,
    focus: Sequence[int],
    window: tuple[float, float],
    map_range: tuple[float, float],
    title: str,
    path: Path | str,
) -> Path:
    """Write a PNG of the slices through ``focus``: scan in grey, map in colour with a colour bar, mask contour.

    Args:
        scan: ``(X, Y, Z)`` intensities (HU for CT).
        anomaly: ``(X, Y, Z)`` map on the scan's grid.
        mask: ``(X, Y, Z)`` nonzero where the map passes the threshold; outlined in white.
        body: ``(X, Y, Z)`` bool, where the map is drawn.
        affine: ``(4, 4)`` voxel index to RAS mm.
        focus: ``(i, j, k)`` voxel the three slices pass through (a cross marks it).
        window: ``(low, high)`` intensities shown black to white.
        map_range: ``(low, high)`` map values at the ends of the colour map.
        title: the figure's title.
        path: output ``.png``, written atomically.

    Returns:
        ``path``.
    """
    volumes = [np.asarray(v) for v in (scan, anomaly, mask, body)]
    shapes = {v.shape for v in volumes}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"scan, map, mask and body must share one (X, Y, Z) shape, got {sorted(shapes)}")
    orientation = nib.orientations.io_orientation(np.asarray(affine))
    point = _reoriented_index(focus, orientation, scan.shape)
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)[np.argsort(orientation[:, 0])]
    figure = Figure(figsize=(15, 5.6), dpi=100)  # a fixed layout: constrained layout took a third of the time
    panels = figure.subplots(1, 3, gridspec_kw=_PANELS)
    norm = matplotlib.colors.Normalize(*map_range)
    for axes, view in zip(panels, VIEWS):
        image = _draw_view(axes, view, _oriented_slabs(volumes, orientation, view, focus), point, spacing, window,
                           norm)
    bar = figure.colorbar(image, cax=figure.add_axes(_COLOUR_BAR))
    bar.set_label("anomaly map (white contour: mask, map above the threshold)")
    figure.suptitle(title)
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", facecolor="white")
    return path


def _oriented_slabs(volumes: list[np.ndarray], orientation: np.ndarray, view: str, focus: Sequence[int]
                    ) -> list[np.ndarray]:
    """The one-voxel-thick slab of each stored volume through ``focus`` that ``view`` shows, in RAS orientation.

    Cut before reorienting, so that only a slice of each volume is copied, never the volume.
    """
    through = _VIEW_AXES[view][2]
    stored_axis = int(np.flatnonzero(orientation[:, 0] == through)[0])
    index = int(focus[stored_axis])
    cut = (slice(None),) * stored_axis + (slice(index, index + 1),)
    return [nib.orientations.apply_orientation(v[cut], orientation) for v in volumes]


def _draw_view(axes, view: str, slabs: list[np.ndarray], point: tuple[int, int, int], spacing: np.ndarray,
               window: tuple[float, float], norm: matplotlib.colors.Normalize):
    """Draw one view from its RAS slabs (:func:`_oriented_slabs`); returns the map's image (for the colour bar)."""
    across, up, through = _VIEW_AXES[view]
    scan, anomaly, mask, body = (_screen(v, across, up, through, 0) for v in slabs)
    extent = (0, scan.shape[1] * spacing[across], 0, scan.shape[0] * spacing[up])  # mm, origin bottom left
    axes.imshow(scan, cmap="gray", vmin=window[0], vmax=window[1], extent=extent, interpolation="nearest")
    heat = axes.imshow(np.ma.masked_where(~body.astype(bool), anomaly), cmap=COLORMAP, norm=norm, alpha=MAP_ALPHA,
                       extent=extent, interpolation="nearest")
    if mask.any():
        axes.contour(mask.astype(np.uint8), levels=[0.5], colors="white", linewidths=1.0, extent=extent,
                     origin="upper")
    x = (scan.shape[1] - 1 - point[across] + 0.5) * spacing[across]  # the screen's columns run against the axis
    y = (point[up] + 0.5) * spacing[up]  # rows too, and imshow's origin "upper" puts row 0 at the top
    axes.plot([x], [y], marker="+", markersize=14, color="cyan", markeredgewidth=1.5)
    left, right, top = _EDGE_LETTERS[view]
    for text, position in ((left, (0.01, 0.5)), (right, (0.99, 0.5)), (top, (0.5, 0.99))):
        axes.text(*position, text, transform=axes.transAxes, color="yellow", ha="center", va="center",
                  fontsize=11, fontweight="bold")
    axes.set_title(f"{view}, slice {point[through]}")
    axes.set_axis_off()
    return heat


def _screen(volume: np.ndarray, across: int, up: int, through: int, index: int) -> np.ndarray:
    """The slice ``index`` along RAS axis ``through`` as a screen image: rows top to bottom, columns left to right.

    RAS axes grow to the patient's right, anterior and superior; the screen's top is superior
    (anterior in the axial view) and its left the patient's right (anterior in the sagittal view),
    so rows run down the ``up`` axis and columns down the ``across`` axis.
    """
    plane = volume[(slice(None),) * through + (index,)]  # (across, up): every view has across < up
    return plane.T[::-1, ::-1]


def _reoriented_index(index: Sequence[int], orientation: np.ndarray, shape: Sequence[int]) -> tuple[int, int, int]:
    """Where voxel ``index`` of the stored array lands after ``apply_orientation(array, orientation)``."""
    moved = [0, 0, 0]
    for axis, (target, flip) in enumerate(orientation):
        moved[int(target)] = int(index[axis]) if flip > 0 else int(shape[axis]) - 1 - int(index[axis])
    return tuple(moved)
