"""How consistent a run's maps are across neighbouring slices inside lesions.

For every scan of a ``visualad-med evaluate --layout msd`` run, the per-slice scores of its report
(along the sliced axis) and its label volume: the median over all pairs of neighbouring slices that
both hold lesion of ``|score(k+1) - score(k)|``, relative to the median slice score inside lesions
(a map that is red on one slice and cold on the next has a large jump).

    python benchmarks/slice_consistency.py runs/lgg30_k32t --data ../shared/data/lgg_volumes_msd
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    print("| run | lesion slice pairs | median jump | median lesion slice score | jump / score |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        jumps, inside = [], []
        for report_path in sorted((run / "maps").glob("*_report.json")):
            report = json.loads(report_path.read_text())
            scores, axis = report["scores"]["per_slice"], report["scores"]["slice_axis"]
            label = np.asarray(nib.load(args.data / "labelsTr" / f"{report['scan']}.nii.gz").dataobj) > 0
            lesion = label.any(axis=tuple(a for a in range(3) if a != axis))
            for k in range(len(scores) - 1):
                if lesion[k] and lesion[k + 1] and scores[k] is not None and scores[k + 1] is not None:
                    jumps.append(abs(scores[k + 1] - scores[k]))
            inside += [s for s, held in zip(scores, lesion) if held and s is not None]
        jump, level = float(np.median(jumps)), float(np.median(inside))
        print(f"| {run.name} | {len(jumps)} | {jump:.3f} | {level:.3f} | {jump / level:.3f} |")


if __name__ == "__main__":
    main()
