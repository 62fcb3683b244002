"""Fusions of a run's maps with the intensity term, on a labelled volume set (Decathlon layout).

Per scan: the product's loading (window, lifted background), its body (as the evaluation's body mask),
the intensity term (robust z-score of the windowed intensity over the body, one-sided bright) and the
run's map, standardised over the body voxels of the whole run (median, 1.4826 x MAD). Fusions:

* ``mean``: the average of the two z-scores (a fixed weight: the rule the issue measured failing);
* ``gated``: the map plus the intensity z-score where the map itself exceeds its null, weighted by
  ``2 Phi(z_map) - 1`` (0 at the null's median, 0.95 at 2 sd): bright voxels count only where the map
  already finds them unusual, so bright normal anatomy (scalp, bone) that the map explains adds nothing;
* ``agreement``: the map plus the intensity z-score weighted by the run's own Spearman correlation of
  the two over its body voxels (clipped at 0);
* ``vouched``: the product's rule (:class:`visualad_med.model.intensity.IntensityFusion`) on a sample
  of every 50th body voxel of every scan (the product takes 200,000 voxels of 8 scans).

Printed per variant: pooled voxel AP, best Dice and slice AUROC over the body (as ``intensity_baseline.py``)
and the mean per-scan voxel AP with a paired bootstrap interval of its difference to the map.

    python benchmarks/intensity_fusion.py --data ../shared/data/lgg_volumes_msd --maps runs/lgg30_depth
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy.special import ndtr
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from intensity_baseline import pooled, slice_scores
from paired_bootstrap import paired_interval
from visualad_med.inference.cohort import NULL_SD
from visualad_med.io import load_scan
from visualad_med.model.body_reference import volume_body_mask
from visualad_med.model.intensity import IntensityFusion, intensity_z
from visualad_med.model.mutual import robust_statistics
from visualad_med.transforms import anatomical_axis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--maps", type=Path, required=True, help="a visualad-med evaluate --layout msd run")
    args = parser.parse_args()
    scans = []
    for image in sorted((args.data / "imagesTr").glob("*.nii.gz")):
        name = image.name[: -len(".nii.gz")]
        scan = load_scan(image)
        volume = scan.volume[0].as_tensor()
        window = (scan.window.low, scan.window.high)
        body = volume_body_mask(volume, window)
        truth = np.asarray(nib.load(args.data / "labelsTr" / image.name).dataobj) > 0
        anomaly = np.asarray(nib.load(args.maps / "maps" / f"{name}_anomaly.nii.gz").dataobj, dtype=np.float32)
        axis = anatomical_axis(scan.volume.affine, "axial")
        scans.append({"body": body.numpy(), "truth": truth, "map": anomaly,
                      "intensity": intensity_z(volume, window, body).numpy(), "axis": axis})
    sample = np.concatenate([s["map"][s["body"]][::50] for s in scans])
    m_median, m_spread = robust_statistics(torch.from_numpy(sample))
    for s in scans:
        s["map"] = (s["map"] - m_median) / m_spread
    pairs = np.concatenate([np.stack([s["map"][s["body"]][::50], s["intensity"][s["body"]][::50]]) for s in scans], 1)
    weight = max(0.0, float(spearmanr(pairs[0], pairs[1]).statistic))
    vouched = IntensityFusion.of(torch.from_numpy(pairs[0]), torch.from_numpy(pairs[1]), NULL_SD)
    w = vouched.weight
    variants = {
        "map": lambda s: s["map"],
        "intensity z-score": lambda s: s["intensity"],
        "mean": lambda s: (s["map"] + s["intensity"]) / 2,
        "gated": lambda s: s["map"] + np.clip(2 * ndtr(s["map"]) - 1, 0, None) * np.clip(s["intensity"], 0, None),
        f"agreement (w={weight:.2f})": lambda s: s["map"] + weight * s["intensity"],
        f"vouched, the product's rule (w={w:.2f}; v_int {vouched.vouches[0]:.2f}, v_map {vouched.vouches[1]:.2f})":
            lambda s: (1 - w) * s["map"] + w * s["intensity"],
    }
    print(f"{args.data.name}, maps of {args.maps.name}: pooled over the body voxels (percent)")
    print("| variant | voxel AP | slice AUROC | best Dice | per-scan voxel AP | vs map [95 % CI] |")
    print("|---|---|---|---|---|---|")
    baseline = None
    for kind, make in variants.items():
        tally, per_scan = ([], [], [], []), []
        for s in scans:
            scores = make(s).astype(np.float32)
            tally[0].append(scores[s["body"]])
            tally[1].append(s["truth"][s["body"]])
            tally[2].append(slice_scores(scores, s["body"], s["axis"]))
            tally[3].append(s["truth"].any(axis=tuple(a for a in range(3) if a != s["axis"])))
            inside = s["truth"][s["body"]]
            per_scan.append(average_precision_score(inside, scores[s["body"]]) if inside.any() else np.nan)
        per_scan = np.array(per_scan)
        baseline = per_scan if baseline is None else baseline
        keep = ~np.isnan(per_scan)
        difference = per_scan[keep] - baseline[keep]
        low, high = paired_interval(baseline[keep], per_scan[keep], 2000) if len(difference) > 1 else (np.nan, np.nan)
        numbers = pooled(*tally)
        print(f"| {kind} | {100 * numbers['voxel_ap']:.1f} | {100 * numbers['slice_auroc']:.1f} | "
              f"{100 * numbers['best_dice']:.1f} | {100 * np.nanmean(per_scan):.1f} | "
              f"{100 * difference.mean():+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] |")


if __name__ == "__main__":
    main()
