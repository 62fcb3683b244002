"""The intensity baseline on a 2D set (MVFA / BMAD layout), as the suite's 2D rows are made.

Each image is read as ``evaluate`` reads it (letterboxed to 224 px, ``--resize pad``); its grey level
(mean of RGB) is robust-z-scored over its body (grey above 10 % of its brightest, as body referencing
does): bright is anomalous. Image score: the mean of the top 1 % of the body's z-scores. Printed per
class and as the mean over classes: image AUROC and AP (classes with normal and abnormal images) and
pixel AUROC over the letterboxed image area (classes with masks).

    python benchmarks/intensity_baseline_2d.py --data ../shared/data/lgg_mvfa
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from visualad_med.datasets import build_dataset
from visualad_med.model.body_reference import body_mask
from visualad_med.model.torch_model import TOP_FRACTION

MEAN, STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def intensity_map(image: np.ndarray) -> tuple[np.ndarray, float]:
    """``(3, S, S)`` normalised image -> its ``(S, S)`` robust intensity z-scores and the image score."""
    grey = (image * np.array(STD)[:, None, None] + np.array(MEAN)[:, None, None]).mean(axis=0)
    body = body_mask(torch.from_numpy(image)[None], MEAN, STD)[0].numpy()
    inside = grey[body] if body.any() else grey.ravel()
    median = np.median(inside)
    z = (grey - median) / (1.4826 * np.median(np.abs(inside - median)) or 1.0)
    values = np.sort(z[body] if body.any() else z.ravel())
    count = max(1, math.ceil(TOP_FRACTION * values.size))
    return z, float(values[-count:].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--layout", default="mvfa")
    args = parser.parse_args()
    dataset = build_dataset(args.layout, args.data, 224, MEAN, STD, split="test", resize="pad")
    per_class: dict[str, dict[str, list]] = {}
    for k in range(len(dataset)):
        sample = dataset[k]
        if sample is None:
            continue
        z, score = intensity_map(sample["image"].numpy())
        tally = per_class.setdefault(sample["class_name"], {"labels": [], "scores": [], "pixels": [], "truth": []})
        tally["labels"].append(sample["label"])
        tally["scores"].append(score)
        if sample["has_mask"]:
            top, left, height, width = (int(v) for v in sample["valid"])
            tally["pixels"].append(z[top:top + height, left:left + width].ravel())
            tally["truth"].append(sample["mask"].numpy()[top:top + height, left:left + width].ravel() > 0.5)
    rows = {}
    print(f"{args.data.name}: intensity baseline (percent)")
    print("| class | image AUROC | image AP | pixel AUROC |")
    print("|---|---|---|---|")
    for name, tally in per_class.items():
        labels = np.array(tally["labels"])
        both = 0 < labels.sum() < len(labels)
        truth = np.concatenate(tally["truth"]) if tally["truth"] else np.zeros(0, bool)
        row = {"image_auroc": roc_auc_score(labels, tally["scores"]) if both else math.nan,
               "image_ap": average_precision_score(labels, tally["scores"]) if both else math.nan,
               "pixel_auroc": roc_auc_score(truth, np.concatenate(tally["pixels"])) if 0 < truth.sum() < truth.size
               else math.nan}
        rows[name] = row
        print(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in row.values()) + " |")
    means = {key: statistics.fmean(r[key] for r in rows.values() if not math.isnan(r[key]))
             if any(not math.isnan(r[key]) for r in rows.values()) else math.nan for key in ("image_auroc", "image_ap", "pixel_auroc")}
    print("| **mean** | " + " | ".join(f"{100 * v:.1f}" for v in means.values()) + " |")


if __name__ == "__main__":
    main()
