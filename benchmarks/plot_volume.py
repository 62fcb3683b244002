"""PNG of three orthogonal slices of a scan with its anomaly map, and a reference mask (e.g. a known lesion) outlined.

The picture is the product's quick look (:func:`visualad_med.io.quick_look.save_quick_look`) drawn
for any map and mask on the scan's grid, through the map's maximum in the body or a given voxel.

    python benchmarks/plot_volume.py SCAN ANOMALY_NII OUT_PNG [--mask MASK_NII] [--window brain] [--point X,Y,Z]
"""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np

from visualad_med.io import load_scan
from visualad_med.io.quick_look import save_quick_look
from visualad_med.model.body_reference import volume_body_mask


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
    scan = load_scan(args.scan, window=window)
    intensities = scan.volume[0].numpy()
    anomaly = nib.load(args.anomaly).get_fdata(dtype=np.float32)
    outline = np.asarray(nib.load(args.mask).dataobj) if args.mask else np.zeros(anomaly.shape, np.uint8)
    body = volume_body_mask(scan.volume[0].as_tensor(), (scan.window.low, scan.window.high)).numpy()
    if args.point:
        point = tuple(int(v) for v in args.point.split(","))
    else:
        point = np.unravel_index(int(np.argmax(np.where(body, anomaly, -np.inf))), anomaly.shape)
    values = anomaly[body] if body.any() else anomaly.ravel()
    save_quick_look(intensities, anomaly, outline, body, scan.volume.affine.numpy(), point,
                    (scan.window.low, scan.window.high), (float(values.min()), float(values.max())),
                    f"{scan.source.name}: map maximum in the body at voxel {list(map(int, point))}; white: "
                    f"{args.mask or 'no reference mask'}", args.out)
    print(f"wrote {args.out} (slices through voxel {tuple(map(int, point))})")


if __name__ == "__main__":
    main()
