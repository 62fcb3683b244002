"""Stress copies of a Decathlon-layout volume set, for checking rules on inputs prepared another way.

Neither copy is data from another source, and neither may choose a default: they show whether a
rule moves the way it should when the same patients arrive preprocessed differently.

* ``stripped``: each slice's body (above 10 % of the scan's maximum, holes filled) eroded by a
  disk of ``--erode`` pixels and reduced to its largest component, a crude skull strip; the
  voxels inside are z-normalised over the scan (mean 0, sd 1), the rest set to exactly 0, float32;
  labels cut to the mask. The way BraTS-like sets are distributed.
* ``bright``: the stripped copy with every lesion brightened by ``--boost`` sd (the label, smoothed
  with a Gaussian of 1.5 x 1.5 x 0.5 voxels), so lesions are simply brighter than their tissue.

    python benchmarks/derived_sets.py ../shared/data/lgg_volumes_msd runs/data_stripped runs/data_bright
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


def strip(volume: np.ndarray, erode: int) -> np.ndarray:
    """Bool mask of the eroded body, slice by slice along the last axis."""
    disk = np.hypot(*np.mgrid[-erode:erode + 1, -erode:erode + 1]) <= erode
    mask = np.zeros(volume.shape, bool)
    for k in range(volume.shape[2]):
        inner = ndimage.binary_erosion(ndimage.binary_fill_holes(volume[..., k] > 0.1 * volume.max()), disk)
        components, count = ndimage.label(inner)
        if count:
            sizes = ndimage.sum(inner, components, range(1, count + 1))
            mask[..., k] = components == 1 + int(np.argmax(sizes))
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("stripped", type=Path)
    parser.add_argument("bright", type=Path)
    parser.add_argument("--erode", type=int, default=10, help="erosion radius in pixels")
    parser.add_argument("--boost", type=float, default=2.5, help="lesion brightening in sd of the brain")
    args = parser.parse_args()
    for folder in (args.stripped, args.bright):
        (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
        shutil.copy(args.source / "dataset.json", folder / "dataset.json")
    for image in sorted((args.source / "imagesTr").glob("*.nii.gz")):
        loaded = nib.load(image)
        volume = np.asarray(loaded.dataobj).astype(np.float32)
        label = np.asarray(nib.load(args.source / "labelsTr" / image.name).dataobj) > 0
        brain = strip(volume, args.erode)
        inside = volume[brain]
        z = np.zeros_like(volume)
        z[brain] = (inside - inside.mean()) / inside.std()
        label &= brain
        boost = ndimage.gaussian_filter(label.astype(np.float32), (1.5, 1.5, 0.5)) * args.boost
        for folder, data in ((args.stripped, z), (args.bright, np.where(brain, z + boost, 0.0).astype(np.float32))):
            nib.save(nib.Nifti1Image(data, loaded.affine), folder / "imagesTr" / image.name)
            nib.save(nib.Nifti1Image(label.astype(np.uint8), loaded.affine), folder / "labelsTr" / image.name)


if __name__ == "__main__":
    main()
