"""The intensity baseline a radiologist would try, on a labelled volume set, beside a run's maps.

Per scan of a Decathlon-layout folder: the scan windowed as ``infer`` windows it (``auto``), its
body (windowed intensity above 10 % of the brightest, as the evaluation's body mask), and the
robust z-score of the windowed intensity over that body (minus the body's median, over 1.4826 x
its MAD; bright is anomalous, one-sided by ranking). Printed, pooled over the body voxels of every
scan: voxel AP, best Dice over thresholds, and slice AUROC (slice score: the mean of the top 1 % of
its body voxels' scores; slices without body score lowest). With ``--maps RUN`` the same numbers
for the maps of a ``visualad-med evaluate --layout msd`` run, by the same code.

    python benchmarks/intensity_baseline.py --data ../shared/data/lgg_volumes_msd --maps runs/lgg30_depth
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from visualad_med.io import load_scan
from visualad_med.model.body_reference import volume_body_mask
from visualad_med.transforms import anatomical_axis


def slice_scores(scores: np.ndarray, body: np.ndarray, axis: int) -> np.ndarray:
    """Per slice along ``axis``: mean of the top 1 % of its body voxels' scores (``-inf`` without body)."""
    out = []
    for k in range(scores.shape[axis]):
        inside = np.take(scores, k, axis=axis)[np.take(body, k, axis=axis)]
        if inside.size == 0:
            out.append(-np.inf)
            continue
        count = max(1, math.ceil(0.01 * inside.size))
        out.append(float(np.partition(inside, inside.size - count)[-count:].mean()))
    return np.array(out)


def pooled(values: list[np.ndarray], truths: list[np.ndarray], slices: list[np.ndarray],
           slice_truths: list[np.ndarray]) -> dict[str, float]:
    """Voxel AP and best Dice over the pooled body voxels, slice AUROC over the pooled slices."""
    scores, truth = np.concatenate(values), np.concatenate(truths)
    precision, recall, _ = precision_recall_curve(truth, scores)
    dice = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12))
    flat, labels = np.concatenate(slices), np.concatenate(slice_truths)
    flat = np.where(np.isfinite(flat), flat, np.min(flat[np.isfinite(flat)]) - 1)
    return {"voxel_ap": average_precision_score(truth, scores), "best_dice": float(dice),
            "slice_auroc": roc_auc_score(labels, flat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--maps", type=Path, nargs="*", default=[], help="evaluate runs whose maps to score alike")
    args = parser.parse_args()
    kinds = {"intensity z-score": {}, **{run.name: {} for run in args.maps}}
    tallies = {name: ([], [], [], []) for name in kinds}
    for image in sorted((args.data / "imagesTr").glob("*.nii.gz")):
        name = image.name[: -len(".nii.gz")]
        scan = load_scan(image)
        windowed = np.clip((scan.volume[0].numpy() - scan.window.low) / (scan.window.high - scan.window.low), 0, 1)
        body = volume_body_mask(scan.volume[0].as_tensor(), (scan.window.low, scan.window.high)).numpy()
        truth = np.asarray(nib.load(args.data / "labelsTr" / image.name).dataobj) > 0
        axis = anatomical_axis(scan.volume.affine, "axial")
        inside = windowed[body]
        median = np.median(inside)
        spread = 1.4826 * np.median(np.abs(inside - median)) or 1.0
        maps = {"intensity z-score": (windowed - median) / spread}
        for run in args.maps:
            maps[run.name] = np.asarray(nib.load(run / "maps" / f"{name}_anomaly.nii.gz").dataobj, dtype=np.float32)
        slice_truth = truth.any(axis=tuple(a for a in range(3) if a != axis))
        for kind, scores in maps.items():
            values, truths, slices, slice_truths = tallies[kind]
            values.append(scores[body].astype(np.float32))
            truths.append(truth[body])
            slices.append(slice_scores(scores, body, axis))
            slice_truths.append(slice_truth)
    print(f"{args.data.name}: pooled over the body voxels (percent)")
    print("| map | voxel AP | slice AUROC | best Dice |")
    print("|---|---|---|---|")
    for kind, tally in tallies.items():
        numbers = pooled(*tally)
        print(f"| {kind} | {100 * numbers['voxel_ap']:.1f} | {100 * numbers['slice_auroc']:.1f} | "
              f"{100 * numbers['best_dice']:.1f} |")


if __name__ == "__main__":
    main()
