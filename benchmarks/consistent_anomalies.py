"""What consistent anomalies cost a cohort: the default against an oracle whose candidates hold no lesion.

In a cohort where every scan has a lesion, a lesion's patches can find their like in another scan's
lesion and score low (CoDeGraph, arXiv 2510.10456). This runs ``visualad-med evaluate --layout msd``
twice on the same feature store: as shipped, and with every slice's candidates chosen among the other
scans' slices *without* a labelled voxel (labels used to choose candidates: a measurement only, never
a product setting; K nearest by descriptor as usual, from the lesion-free slices). The gap between the
two runs is what consistent anomalies cost; the per-scan paired bootstrap is printed by
``paired_bootstrap.py``. A third run, ``unmarked``, takes candidates only among the slices in which the
shipped run's own mask marks nothing: a label-free, two-pass counter.

    python benchmarks/consistent_anomalies.py --data ../shared/data/lgg_volumes_msd --out runs/consistent \
        --feature-store runs/suite7_store/lgg_volumes_msd
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

import visualad_med.inference.cohort as cohort_stage
from visualad_med.apps.cli import main as cli_main
from visualad_med.model.candidates import SliceCandidates
from visualad_med.transforms import anatomical_axis


def lesion_slices(labels: Path, name: str) -> set[int]:
    """Array indices along the axial axis of the slices of scan ``name`` that hold a labelled voxel."""
    image = nib.load(labels / f"{name}.nii.gz")
    axis = anatomical_axis(image.affine, "axial")
    truth = np.asarray(image.dataobj) > 0
    return set(np.flatnonzero(truth.any(axis=tuple(a for a in range(3) if a != axis))).tolist())


def masked_slices(run: Path, name: str) -> set[int]:
    """Array indices along the axial axis of the slices in which run ``run``'s mask of ``name`` marks a voxel."""
    image = nib.load(run / "maps" / f"{name}_mask.nii.gz")
    axis = anatomical_axis(image.affine, "axial")
    marked = np.asarray(image.dataobj) > 0
    return set(np.flatnonzero(marked.any(axis=tuple(a for a in range(3) if a != axis))).tolist())


def loosely_marked(run: Path, sd: float):
    """Like :func:`masked_slices`, marking at median + ``sd`` robust sd of the run's maps (a sample of every
    97th voxel of every scan) instead of at the run's own 3-sd threshold."""
    maps = sorted((run / "maps").glob("*_anomaly.nii.gz"))
    pooled = np.concatenate([np.asarray(nib.load(f).dataobj, dtype=np.float32).ravel()[::97] for f in maps])
    median = np.median(pooled)
    threshold = median + sd * 1.4826 * np.median(np.abs(pooled - median))

    def marked(folder: Path, name: str) -> set[int]:
        image = nib.load(folder / "maps" / f"{name}_anomaly.nii.gz")
        axis = anatomical_axis(image.affine, "axial")
        above = np.asarray(image.dataobj, dtype=np.float32) > threshold
        return set(np.flatnonzero(above.any(axis=tuple(a for a in range(3) if a != axis))).tolist())
    return marked


def oracle_chooser(labels: Path, excluded=lesion_slices):
    """A stand-in for the stage's candidate chooser: each slice's K most similar lesion-free slices of other scans
    by global descriptor (exact search: dev cohorts are small)."""
    def choose(entries, cohort) -> SliceCandidates:
        scan_of = np.concatenate([np.full(len(e.indices), k) for k, e in enumerate(entries)])
        lesions = {e.name: excluded(labels, e.name) for e in entries}
        free = np.concatenate([[int(i) not in lesions[e.name] for i in e.indices] for e in entries])
        descriptors = np.concatenate([e.descriptors for e in entries])
        kept = np.flatnonzero(free)
        similarity = descriptors @ descriptors[kept].T
        table = np.full((len(scan_of), cohort.candidates), -1, dtype=np.int64)
        for row in range(len(scan_of)):
            allowed = np.flatnonzero(scan_of[kept] != scan_of[row])
            best = allowed[np.argsort(-similarity[row, allowed], kind="stable")[:cohort.candidates]]
            table[row, :len(best)] = kept[best]
        return SliceCandidates(table, False)
    return choose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a Decathlon-layout volume set")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--feature-store", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=["oracle", "unmarked"], choices=["oracle", "unmarked", "unmarked2sd"],
                        help="oracle: candidates without labelled voxels; unmarked: candidates in which the shipped "
                        "run's own mask marks nothing (labels not used)")
    args = parser.parse_args()
    common = ["evaluate", "--data", str(args.data), "--layout", "msd", "--feature-store", str(args.feature_store)]
    if not (args.out / "shipped" / "results.json").is_file():
        cli_main([*common, "--out", str(args.out / "shipped")])
    chosen = {"oracle": oracle_chooser(args.data / "labelsTr"),
              "unmarked": oracle_chooser(args.out / "shipped", masked_slices),
              "unmarked2sd": oracle_chooser(args.out / "shipped", loosely_marked(args.out / "shipped", 2.0))}
    for name in args.variants:
        cohort_stage._choose_candidates = chosen[name]
        cli_main([*common, "--out", str(args.out / name)])
        subprocess.run([sys.executable, str(Path(__file__).with_name("paired_bootstrap.py")),
                        str(args.out / "shipped"), str(args.out / name)], check=True)


if __name__ == "__main__":
    main()
