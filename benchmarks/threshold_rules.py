"""Mask thresholds derived from a run's own maps, against the best threshold, on an evaluated volume set.

Reads the maps of a ``visualad-med evaluate --layout msd`` run (``OUT/maps/<scan>_anomaly.nii.gz``), the
label volumes and the scans (for the body: windowed intensity above 10 % of the brightest, as the
evaluation's body mask), and prints pooled Dice for each threshold rule:

* ``fixed T``: the threshold the run used (from the reports);
* ``null k sd``: median + k x 1.4826 x MAD of the cohort's body voxels (a fixed false-positive rate of
  a normal null);
* ``per-scan null k sd``: the same on each scan's own body voxels;
* ``mixture``: a two-component Gaussian mixture fitted to the body voxels above the median; the
  threshold where the upper component becomes the more likely one;
* ``best``: the best threshold over the pooled voxels (the ceiling, uses the labels).

    python benchmarks/threshold_rules.py runs/lgg30_k32c --data ../shared/data/lgg_volumes_msd
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from sklearn.mixture import GaussianMixture

from visualad_med.io import load_scan
from visualad_med.model.body_reference import volume_body_mask


def dice(scores: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    predicted = scores > threshold
    overlap = np.count_nonzero(predicted & truth)
    return 2 * overlap / max(1, np.count_nonzero(predicted) + np.count_nonzero(truth))


def mixture_threshold(values: np.ndarray, seed: int = 0) -> float:
    """Where the upper of two Gaussians fitted to the values above their median becomes the more likely."""
    upper = values[values > np.median(values)][:, None]
    model = GaussianMixture(2, random_state=seed).fit(upper)
    grid = np.linspace(np.median(values), values.max(), 2000)[:, None]
    posterior = model.predict_proba(grid)[:, int(np.argmax(model.means_[:, 0]))]
    above = np.flatnonzero(posterior > 0.5)
    return float(grid[above[0], 0]) if above.size else float(values.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--sample", type=int, default=20, help="keep every N-th body voxel for the fits")
    args = parser.parse_args()
    values, truths, used = [], [], None
    for report_path in sorted((args.run / "maps").glob("*_report.json")):
        report = json.loads(report_path.read_text())
        name = report["scan"]
        scan = load_scan(args.data / "imagesTr" / f"{name}.nii.gz")
        body = volume_body_mask(scan.volume[0].as_tensor(), (scan.window.low, scan.window.high)).numpy()
        anomaly = np.asarray(nib.load(args.run / "maps" / f"{name}_anomaly.nii.gz").dataobj, dtype=np.float32)
        label = np.asarray(nib.load(args.data / "labelsTr" / f"{name}.nii.gz").dataobj) > 0
        values.append(anomaly[body])
        truths.append(label[body])
        used = report["threshold"]
    scores, truth = np.concatenate(values), np.concatenate(truths)
    sample = scores[:: args.sample]
    median = float(np.median(sample))
    spread = 1.4826 * float(np.median(np.abs(sample - median)))
    rules = {f"fixed {used:g}": used}
    rules.update({f"null {k} sd": median + k * spread for k in (2, 3, 4, 5)})
    rules["mixture"] = mixture_threshold(sample)
    candidates = np.quantile(sample, np.linspace(0.5, 0.9999, 400))
    best = max(candidates, key=lambda t: dice(scores, truth, t))
    rules["best (labels)"] = float(best)
    print(f"{args.run.name}: {truth.size} body voxels, {truth.sum()} labelled; body median {median:.3f}, "
          f"robust sd {spread:.3f}")
    print("| rule | threshold | share of body above | pooled Dice |")
    print("|---|---|---|---|")
    for rule, threshold in rules.items():
        print(f"| {rule} | {threshold:.3f} | {100 * np.mean(scores > threshold):.2f} % | "
              f"{100 * dice(scores, truth, threshold):.1f} |")
    for k in (3, 4, 5):  # each scan's own null: its body voxels' median + k robust sd
        marked = []
        for scan_values in values:
            centre = float(np.median(scan_values))
            marked.append(scan_values > centre + k * 1.4826 * float(np.median(np.abs(scan_values - centre))))
        predicted = np.concatenate(marked)
        overlap = np.count_nonzero(predicted & truth)
        print(f"| per-scan null {k} sd | per scan | {100 * predicted.mean():.2f} % | "
              f"{100 * 2 * overlap / max(1, predicted.sum() + truth.sum()):.1f} |")


if __name__ == "__main__":
    main()
