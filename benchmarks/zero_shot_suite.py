"""The zero-shot dev suite: every dev set of ``../shared/data`` through the public commands, one table.

Each variant is a set of model options for ``visualad-med evaluate`` (a head, a scoring,
a map reference, a size). It is run on

* ``lgg_mvfa`` (2D brain MRI) and ``oct_mvfa`` (2D retinal OCT): image AUROC, image AP, pixel AUROC,
  AUPRO (Mean row);
* ``polyp_skin_mvfa`` (2D, abnormal only): pixel AUROC (Mean row over Kvasir, ColonDB, ISIC);
* ``lgg_volumes_msd`` (30 FLAIR volumes) and ``isles22_dwi_msd`` (one DWI volume), ``--layout msd``:
  pooled voxel AP, slice AUROC, Dice at the run's threshold, best Dice over thresholds.

A set's score is the mean of its headline numbers, the suite mean the mean of the set scores, so
each set weighs the same. Variants named ``NAME@SEED`` are seeds of one recipe: their rows are
printed, then a ``NAME`` row with mean and sd over the seeds.

Decision rules (model card). A *trained* variant replaces the default only if it raises the suite
mean over at least 3 training seeds and lowers no set's score by more than that set's sd over seeds.
A *deterministic* variant (no training: a scoring, a size, a rule) has no seed spread; it is compared
with ``--base`` (default: the variant named ``default``) by a paired bootstrap per set (second
table): 95 % interval of the difference of image AUROC over resampled images (2D sets with normal
images), of the mean per-scan voxel AP over resampled scans (volume sets of several scans). It
replaces the base only if no interval lies wholly below 0 and the suite mean rises; a set without an
interval (one scan, or pixel metrics only) is judged by its point difference, reported as such.

    python benchmarks/zero_shot_suite.py                       # untrained, selfsim, shipped head
    python benchmarks/zero_shot_suite.py --variant "c4@111=--head runs/c4_s111/head.safetensors" ...

Results are cached per variant and set under ``--out`` (rerun with ``--fresh`` to recompute)
and gathered into ``--out/suite.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from paired_bootstrap import per_scan
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHIPPED = ROOT / "bundles" / "visualad_zsad" / "models" / "visualad_head.safetensors"
DEFAULT_VARIANTS = (
    "untrained=--head untrained --backbone dinov2-s14-224 --map-reference body --scoring visualad",
    f"selfsim=--head {SHIPPED} --scoring selfsim",
    f"shipped=--head {SHIPPED} --scoring visualad",
    f"default=--head {SHIPPED}",
)
"""The baselines, the shipped head alone, and the product's default (the shipped head; volume runs of two or
more scans scored as a cohort, ``visualad+mutual``). A variant's options go to every set's ``evaluate`` as they
are, so a variant without ``--scoring`` gets each command's default."""
VOLUME_KEYS = [("pooled", "voxel_ap"), ("pooled", "slice_auroc"), ("pooled", "dice"), ("pooled", "best_dice")]
SETS = {
    "lgg_mvfa": (["--layout", "mvfa", "--overlays", "0"],
                 [("mean", "image_auroc"), ("mean", "image_ap"), ("mean", "pixel_auroc"), ("mean", "pixel_aupro")]),
    "polyp_skin_mvfa": (["--layout", "mvfa", "--overlays", "0"], [("mean", "pixel_auroc")]),
    "oct_mvfa": (["--layout", "mvfa", "--overlays", "0"],
                 [("mean", "image_auroc"), ("mean", "image_ap"), ("mean", "pixel_auroc"), ("mean", "pixel_aupro")]),
    "lgg_volumes_msd": (["--layout", "msd"], VOLUME_KEYS),
    "isles22_dwi_msd": (["--layout", "msd"], VOLUME_KEYS),
}
TRAINING_SETS = {
    "mtd_mvtec": "magnetic-tile defects (Huang et al. 2020, github abin24/Magnetic-tile-defect-datasets)",
    "industrial_more": "tyres (MVTec 3D-AD, CC BY-NC-SA 4.0), metal plates (MPDD, CC BY-NC-SA 4.0) and road cracks "
                       "(CrackForest, non-commercial research)",
}
"""What the training roots of ``shared/data`` hold, for the bundle's ``data_source``."""
COLUMNS = [f"{name}:{key}" for name, (_, keys) in SETS.items() for _, key in keys]


def run_set(name: str, options: list[str], data: Path, out: Path, fresh: bool, store: Path | None = None) -> dict:
    """``visualad-med evaluate`` of one variant on one set (cached); returns its results.json. Volume sets share
    ``store/<set>`` as their feature store when ``store`` is given (variants that change features key apart)."""
    results = out / "results.json"
    if fresh or not results.is_file():
        shared = ["--feature-store", str(store / name)] if store is not None and "msd" in SETS[name][0] else []
        command = [sys.executable, "-m", "visualad_med", "evaluate", "--data", str(data), "--out", str(out),
                   *SETS[name][0], *shared, *options]
        print("$", shlex.join(command), file=sys.stderr, flush=True)
        started = time.perf_counter()
        finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if finished.returncode not in (0, 1) or not results.is_file():
            raise RuntimeError(f"{name}: evaluate failed ({finished.returncode}):\n{finished.stderr[-2000:]}")
        print(f"  {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return json.loads(results.read_text())


def headline(name: str, results: dict) -> dict[str, float]:
    """The set's headline numbers (fractions), by column name."""
    values = {}
    for row, key in SETS[name][1]:
        value = results[row]["metrics"][key] if row == "mean" else results[row][key]
        values[f"{name}:{key}"] = math.nan if value is None else float(value)
    return values


def scores(values: dict[str, float]) -> dict[str, float]:
    """Per-set score (mean of its headline numbers) and the suite mean."""
    sets = {name: statistics.fmean(values[f"{name}:{key}"] for _, key in keys) for name, (_, keys) in SETS.items()}
    return {**{f"{name}:score": value for name, value in sets.items()}, "suite_mean": statistics.fmean(sets.values())}


def evaluate_variant(spec: str, args: argparse.Namespace) -> tuple[str, dict[str, float]]:
    name, _, options = spec.partition("=")
    values: dict[str, float] = {}
    for set_name in SETS:
        results = run_set(set_name, shlex.split(options), args.data / set_name, args.out / name / set_name,
                          args.fresh, args.feature_store)
        values.update(headline(set_name, results))
    return name, {**values, **scores(values)}


def print_table(rows: dict[str, dict[str, float]]) -> None:
    """Markdown table in percent; seed groups get a mean +- sd row."""
    keys = [*COLUMNS, *(f"{name}:score" for name in SETS), "suite_mean"]
    print("| variant | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    groups: dict[str, list[str]] = {}
    for name in rows:
        groups.setdefault(name.split("@")[0], []).append(name)
    for group, members in groups.items():
        for name in members:
            print(f"| {name} | " + " | ".join(f"{100 * rows[name][k]:.1f}" for k in keys) + " |")
        if len(members) > 1:
            cells = []
            for key in keys:
                values = [100 * rows[name][key] for name in members]
                cells.append(f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}")
            print(f"| **{group}** (n={len(members)}) | " + " | ".join(cells) + " |")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def resampled_differences(base: Path, variant: Path, resamples: int = 2000, seed: int = 0) -> np.ndarray | None:
    """Paired bootstrap of one set's decisive number, ``variant - base`` per resample; ``None`` without one.

    2D (``scores.csv``): image AUROC per class, averaged over classes, over the same resampled images of
    both runs. Volumes (``scans.csv``): the mean per-scan voxel AP over the same resampled scans (two or more).
    """
    rng = np.random.default_rng(seed)
    if (base / "scores.csv").is_file():
        first, second = ({(r["class"], r["path"]): r for r in _rows(folder / "scores.csv")} for folder in (base, variant))
        differences = []
        for name in sorted({key[0] for key in first}):
            keys = sorted(key for key in first if key[0] == name and key in second)
            labels = np.array([int(first[key]["label"]) for key in keys])
            a, b = (np.array([float(rows[key]["score"]) for key in keys]) for rows in (first, second))
            if len(keys) < 2 or labels.min() == labels.max():
                continue
            draws = []
            while len(draws) < resamples:
                pick = rng.integers(0, len(labels), len(labels))
                if labels[pick].min() != labels[pick].max():
                    draws.append(roc_auc_score(labels[pick], b[pick]) - roc_auc_score(labels[pick], a[pick]))
            differences.append(draws)
        return np.mean(differences, axis=0) if differences else None
    first, second = per_scan(base), per_scan(variant)
    paired = np.array([(first[k]["voxel_ap"], second[k]["voxel_ap"]) for k in sorted(first)
                       if "voxel_ap" in first[k] and "voxel_ap" in second.get(k, {})
                       and not (math.isnan(first[k]["voxel_ap"]) or math.isnan(second[k]["voxel_ap"]))])
    if len(paired) < 2:
        return None
    picks = rng.integers(0, len(paired), (resamples, len(paired)))
    return (paired[picks, 1] - paired[picks, 0]).mean(axis=1)


def print_intervals(names: list[str], base: str, out: Path) -> None:
    """Per set, each variant's difference to ``base`` with its 95 % paired-bootstrap interval (percent points)."""
    print(f"\nPaired bootstrap against {base} (2D: image AUROC; volumes: mean per-scan voxel AP; percent points)")
    print("| variant | " + " | ".join(SETS) + " |")
    print("|---" * (len(SETS) + 1) + "|")
    for name in names:
        if name == base:
            continue
        cells = []
        for set_name in SETS:
            draws = resampled_differences(out / base / set_name, out / name / set_name)
            if draws is None:
                cells.append("no interval")
                continue
            low, high = np.percentile(100 * draws, [2.5, 97.5])
            cells.append(f"{100 * draws.mean():+.1f} [{low:+.1f}, {high:+.1f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")


def write_metadata(variant: str, values: dict[str, float], head: Path) -> Path:
    """Regenerate the bundle's ``eval_metrics`` and ``data_source`` from ``variant``'s suite numbers and head."""
    metadata_path = ROOT / "bundles" / "visualad_zsad" / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["eval_metrics"] = {key.replace(":", "_"): round(value, 4) for key, value in values.items()
                                if not math.isnan(value)}
    training = json.loads(head.with_suffix(".json").read_text()).get("training", {})
    roots = training.get("data") or []
    roots = [roots] if isinstance(roots, str) else roots
    described = [TRAINING_SETS.get(Path(root).name, Path(root).name) for root in roots]
    metadata["data_source"] = (
        "Training (industrial images with pixel masks only, MVTec AD layout): " + "; ".join(described)
        + ". Zero-shot evaluation (never trained on): LGG brain MRI slices (Buda et al. 2019, TCGA-LGG) in the "
        "MVFA layout, Kvasir-SEG / CVC-ColonDB polyps and ISIC 2017 skin lesions, retinal OCT B-scans (Hassan "
        "et al. 2021), 30 LGG FLAIR volumes with tumour label volumes and one ISLES'22 stroke DWI volume with its "
        "infarct mask (Decathlon layout); eval_metrics are benchmarks/zero_shot_suite.py's numbers "
        f"(fractions) of variant {variant}. Example scan: the MNI152 2009a T1 template shipped in the nilearn wheel."
    )
    metadata_path.write_text(json.dumps(metadata, indent=4) + "\n")
    return metadata_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", help="NAME=EVALUATE OPTIONS (repeatable); NAME@SEED groups")
    parser.add_argument("--data", type=Path, default=SHARED, help="folder holding the dev sets")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "suite", help="cache of every run")
    parser.add_argument("--fresh", action="store_true", help="recompute cached runs")
    parser.add_argument("--feature-store", type=Path, default=None,
                        help="share one feature store per volume set across variants (FOLDER/<set>)")
    parser.add_argument("--base", default="default", help="variant the others are bootstrapped against")
    parser.add_argument("--metadata", nargs=2, metavar=("VARIANT", "HEAD"), default=None,
                        help="write VARIANT's numbers and HEAD's training data into the bundle's metadata.json")
    args = parser.parse_args()
    rows = dict(evaluate_variant(spec, args) for spec in args.variant or DEFAULT_VARIANTS)
    args.out.mkdir(parents=True, exist_ok=True)
    gathered = args.out / "suite.json"
    previous = json.loads(gathered.read_text()) if gathered.is_file() else {}
    gathered.write_text(json.dumps({**previous, **rows}, indent=2) + "\n")
    print_table(rows)
    if args.base in rows:
        print_intervals(list(rows), args.base, args.out)
    if args.metadata:
        variant, head = args.metadata
        print(f"wrote {write_metadata(variant, rows[variant], Path(head))}")


if __name__ == "__main__":
    main()
