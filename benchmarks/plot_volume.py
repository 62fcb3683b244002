"""PNG of three orthogonal slices of a scan with its anomaly map overlaid, through the map's maximum in the body.

Axial, coronal and sagittal slices in radiological display (the orientation the model saw, see
:func:`visualad_med.transforms.slice_layout`), each drawn with its voxel spacing in mm so that the
anatomy keeps its shape; the map is shown where it is above its median over the body, the crossing
point is marked, and a reference mask (e.g. a known lesion) can be outlined.

    python benchmarks/plot_volume.py SCAN ANOMALY_NII OUT_PNG [--mask MASK_NII] [--window brain] [--point X,Y,Z]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from visualad_med.transforms import WindowIntensity, slice_layout  # noqa: E402
from visualad_med.io import load_scan  # noqa: E402

PLANES = ("axial", "coronal", "sagittal")
BODY = 0.05
"""Windowed intensity above which a voxel counts as body (the inferer's ``has_body`` threshold)."""


def plane_slice(volume: np.ndarray, affine: np.ndarray, plane: str, point: tuple[int, int, int]):
    """The ``plane`` slice of ``volume`` ``(X, Y, Z)`` through ``point``, in radiological display.

    Returns:
        ``(image, (row_mm, column_mm), (row, column))``: the ``(H, W)`` slice, its pixel spacing in
        mm and where ``point`` falls in it.
    """
    perm, flip = slice_layout(affine, plane)
    image = np.moveaxis(volume, perm, (0, 1, 2))[point[perm[0]]]
    row, column = point[perm[1]], point[perm[2]]
    if flip[1]:
        image, row = image[::-1], image.shape[0] - 1 - row
    if flip[2]:
        image, column = image[:, ::-1], image.shape[1] - 1 - column
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return image, (spacing[perm[1]], spacing[perm[2]]), (row, column)


def orthogonal_overlay(
    scan: Path | str,
    anomaly: Path | str,
    out: Path | str,
    window: str | tuple[float, float] = "auto",
    mask: Path | str | None = None,
    point: tuple[int, int, int] | None = None,
    title: str = "",
) -> tuple[int, int, int]:
    """Write the PNG; returns the voxel ``(x, y, z)`` the three slices cross at.

    The default point is the map's maximum inside the body (windowed intensity above ``BODY``): outside
    it, in air and in the padding of non-square slices, the map carries no anatomy.

    Raises:
        ValueError: when the map is not on the scan's voxel grid (shape or affine differ).
    """
    volume = load_scan(scan).volume
    image = nib.load(anomaly)
    affine = volume.affine.numpy()
    if image.shape != tuple(volume.shape[1:]) or not np.allclose(image.affine, affine, atol=1e-4):
        raise ValueError(f"map {anomaly} {image.shape} is not on the grid of {scan} {tuple(volume.shape[1:])}: "
                         f"affines {image.affine.tolist()} vs {affine.tolist()}")
    windowed = WindowIntensity(window)(volume)[0].numpy()
    heat = np.asarray(image.dataobj, dtype=np.float32)
    outline = np.asarray(nib.load(mask).dataobj) > 0 if mask else None
    body = windowed > BODY
    point = point or tuple(int(i) for i in np.unravel_index(np.argmax(np.where(body, heat, -np.inf)), heat.shape))
    low, high = float(np.median(heat[body])), float(heat[body].max())

    figure, axes = plt.subplots(1, 3, figsize=(15, 5.6), facecolor="black")
    for axis, plane in zip(axes, PLANES):
        grey, (row_mm, column_mm), (row, column) = plane_slice(windowed, affine, plane, point)
        values = plane_slice(heat, affine, plane, point)[0]
        extent = (0, grey.shape[1] * column_mm, grey.shape[0] * row_mm, 0)
        axis.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest")
        shown = np.ma.masked_less_equal(values, low)
        drawn = axis.imshow(shown, cmap="jet", vmin=low, vmax=high, alpha=0.4, extent=extent,
                            interpolation="nearest")
        if outline is not None and (inside := plane_slice(outline, affine, plane, point)[0]).any():
            rows, columns = np.mgrid[: grey.shape[0], : grey.shape[1]]
            axis.contour((columns + 0.5) * column_mm, (rows + 0.5) * row_mm, inside.astype(float), levels=[0.5],
                         colors="white", linewidths=1.0)
        axis.plot((column + 0.5) * column_mm, (row + 0.5) * row_mm, "+", color="white", markersize=14)
        axis.set_title(f"{plane} (voxel {point})", color="white")
        axis.axis("off")
    colorbar = figure.colorbar(drawn, ax=axes, fraction=0.015, pad=0.01)
    colorbar.ax.tick_params(colors="white")
    figure.suptitle(title or f"{Path(anomaly).name}: map above its median in the body ({low:.3g}); "
                    f"maximum in the body {high:.3g}",
                    color="white")
    figure.savefig(out, dpi=110, facecolor="black")
    plt.close(figure)
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scan", help="the scan the map was computed on (folder of a DICOM series or a file)")
    parser.add_argument("anomaly", help="<scan>_anomaly.nii.gz")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--mask", default=None, help="a reference mask (NIfTI on the same grid) to outline")
    parser.add_argument("--window", default="auto", help="auto, a CT preset, percentile, or WIDTH,LEVEL in HU")
    parser.add_argument("--point", default=None, help="voxel X,Y,Z to cut through (default: the map's maximum)")
    args = parser.parse_args()
    window = tuple(float(v) for v in args.window.split(",")) if "," in args.window else args.window
    point = tuple(int(v) for v in args.point.split(",")) if args.point else None
    point = orthogonal_overlay(args.scan, args.anomaly, args.out, window, args.mask, point)
    print(f"wrote {args.out} (slices through voxel {point})")


if __name__ == "__main__":
    main()
