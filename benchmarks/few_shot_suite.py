"""Few-shot rows of the dev suite: k normal references drawn from each dev set's own normals.

For ``lgg_mvfa``, k normal slices (seeded draw from ``good/``) are the references and are
removed from the evaluated set; for ``lgg_volumes_msd``, k patients are the references (their
tumour slices blanked, so only normal slices enter the bank) and the other patients are
evaluated. Each few-shot row is printed next to the zero-shot default on the *same* reduced set.
``polyp_skin_mvfa`` has no normal images, so it has no few-shot row.

    python benchmarks/few_shot_suite.py --k 1 2 4 8 16 --volume-k 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def evaluate(options: list[str], out: Path) -> dict:
    """``visualad-med evaluate OPTIONS --out OUT`` (cached); returns results.json."""
    if not (out / "results.json").is_file():
        command = [sys.executable, "-m", "visualad_med", "evaluate", "--out", str(out), *options]
        print("$", shlex.join(command), file=sys.stderr, flush=True)
        subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "results.json").read_text())


def lgg_split(work: Path, k: int, seed: int) -> tuple[Path, Path]:
    """A copy of lgg_mvfa (symbolic links) without k seeded normals, and a folder holding those k."""
    source = SHARED / "lgg_mvfa" / "LGG_AD" / "test"
    normals = sorted((source / "good" / "img").iterdir())
    picks = set(np.random.default_rng(seed).choice(len(normals), k, replace=False).tolist())
    data, refs = work / f"lgg_k{k}" / "data" / "LGG_AD" / "test", work / f"lgg_k{k}" / "refs"
    for folder in (data / "good" / "img", data / "Ungood" / "img", data / "Ungood" / "anomaly_mask", refs):
        folder.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(normals):
        target = refs / path.name if index in picks else data / "good" / "img" / path.name
        if not target.exists():
            target.symlink_to(path)
    for sub in ("img", "anomaly_mask"):
        for path in sorted((source / "Ungood" / sub).iterdir()):
            if not (data / "Ungood" / sub / path.name).exists():
                (data / "Ungood" / sub / path.name).symlink_to(path)
    return work / f"lgg_k{k}" / "data", refs


def volume_split(work: Path, k: int, seed: int) -> tuple[Path, Path]:
    """A Decathlon folder of the patients not drawn, and k drawn patients with their tumour slices blanked."""
    source = SHARED / "lgg_volumes_msd"
    listing = json.loads((source / "dataset.json").read_text())
    cases = listing["training"]
    picks = set(np.random.default_rng(seed).choice(len(cases), k, replace=False).tolist())
    data, refs = work / f"msd_k{k}" / "data", work / f"msd_k{k}" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    kept = []
    for index, case in enumerate(cases):
        image, label = (source / case[key].removeprefix("./") for key in ("image", "label"))
        if index in picks:
            scan = nib.load(image)
            pixels = np.asarray(scan.dataobj).copy()
            tumour = np.asarray(nib.load(label).dataobj).any(axis=(0, 1))
            pixels[..., tumour] = 0
            nib.save(nib.Nifti1Image(pixels, scan.affine, scan.header), refs / image.name)
        else:
            kept.append(case)
            for path in (image, label):
                target = data / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    target.symlink_to(path)
    (data / "dataset.json").write_text(json.dumps({**listing, "training": kept, "numTraining": len(kept)}))
    return data, refs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    parser.add_argument("--volume-k", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="", help="model options for evaluate (default: the shipped head)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "few_shot")
    args = parser.parse_args()
    model = shlex.split(args.model)
    print("| set | k | zero-shot default | few-shot (visualad+mutual with the k references) |")
    print("|---|---|---|---|")
    for k in args.k:
        data, refs = lgg_split(args.out, k, args.seed)
        common = ["--data", str(data), "--layout", "mvfa", "--overlays", "0", *model]
        zero = evaluate(common, args.out / f"lgg_k{k}" / "zero_shot")["mean"]["metrics"]
        few = evaluate([*common, "--reference", str(refs)], args.out / f"lgg_k{k}" / "few_shot")["mean"]["metrics"]
        cells = [" / ".join(f"{100 * m[key]:.1f}" for key in ("image_auroc", "image_ap", "pixel_auroc",
                                                               "pixel_aupro")) for m in (zero, few)]
        print(f"| lgg_mvfa (img AUROC / AP / px AUROC / AUPRO) | {k} | {cells[0]} | {cells[1]} |", flush=True)
    for k in args.volume_k:
        data, refs = volume_split(args.out, k, args.seed)
        common = ["--data", str(data), "--layout", "msd", *model]
        zero = evaluate(common, args.out / f"msd_k{k}" / "zero_shot")["pooled"]
        few = evaluate([*common, "--reference", str(refs)], args.out / f"msd_k{k}" / "few_shot")["pooled"]
        cells = [" / ".join(f"{100 * m[key]:.1f}" for key in ("voxel_ap", "slice_auroc", "dice")) for m in (zero, few)]
        print(f"| lgg_volumes_msd (voxel AP / slice AUROC / Dice) | {k} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
