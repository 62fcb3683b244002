"""Paired bootstrap of two volume evaluations over their scans: is variant B worse than A, per metric?

Reads the ``scans.csv`` of two ``visualad-med evaluate --layout msd`` runs on the same scans and
prints, per metric, the mean over scans of each and the 95 % interval of the mean difference
``B - A`` over 10,000 resamples of the scans (the same scans drawn for both: paired). A scan
where a metric is undefined (e.g. slice AUROC of a scan whose every slice holds tumour) is left
out of that metric.

    python benchmarks/paired_bootstrap.py runs/lgg30_position runs/lgg30_k32 [--metrics voxel_ap dice]
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np

METRICS = ("voxel_ap", "body_ap", "slice_auroc", "dice", "best_dice")


def per_scan(folder: Path) -> dict[str, dict[str, float]]:
    """``scan -> metric -> value`` from an evaluation's ``scans.csv``."""
    with open(folder / "scans.csv", newline="") as handle:
        return {row["scan"]: {key: float(value) for key, value in row.items() if key != "scan" and value != ""}
                for row in csv.DictReader(handle)}


def paired_interval(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``mean(b - a)`` over resampled pairs."""
    rng = np.random.default_rng(seed)
    difference = b - a
    means = difference[rng.integers(0, len(difference), (resamples, len(difference)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="evaluation folder of the reference variant")
    parser.add_argument("b", type=Path, help="evaluation folder of the variant compared with it")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS))
    args = parser.parse_args()
    first, second = per_scan(args.a), per_scan(args.b)
    scans = sorted(set(first) & set(second))
    print(f"{args.b.name} - {args.a.name} over {len(scans)} scans (percent points)")
    print("| metric | A mean | B mean | B - A | 95 % interval |")
    print("|---|---|---|---|---|")
    for metric in args.metrics:
        pairs = [(first[s][metric], second[s][metric]) for s in scans if metric in first[s] and metric in second[s]
                 and not (math.isnan(first[s][metric]) or math.isnan(second[s][metric]))]
        if not pairs:
            continue
        a, b = (100 * np.array(column) for column in zip(*pairs))
        low, high = paired_interval(a, b)
        print(f"| {metric} | {a.mean():.1f} | {b.mean():.1f} | {b.mean() - a.mean():+.1f} | [{low:+.1f}, {high:+.1f}] |")


if __name__ == "__main__":
    main()
