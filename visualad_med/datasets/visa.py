"""VisA layout (Zou et al., ECCV 2022): images listed in ``split_csv/1cls.csv``.

The CSV has the columns ``object,split,label,image,mask``; ``label`` is
``normal`` or ``anomaly``, ``split`` is ``train`` or ``test``, and ``image`` /
``mask`` are paths relative to the data root (``mask`` empty for normal images).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from visualad_med.datasets.paths import resolve_inside
from visualad_med.datasets.samples import LayoutDataset, SampleRecord, check_choice, select_classes

VISA_SPLITS: tuple[str, ...] = ("train", "test")
VISA_COLUMNS: tuple[str, ...] = ("object", "split", "label", "image", "mask")
VISA_LABELS: dict[str, int] = {"normal": 0, "anomaly": 1}
VISA_LAYOUT = "<root>/split_csv/1cls.csv with columns object,split,label,image,mask (paths relative to <root>)"


def read_visa_csv(root: str | Path, csv_path: str | Path | None = None) -> list[dict[str, str]]:
    """Read the VisA split CSV as a list of rows (dicts keyed by column).

    Raises:
        ValueError: the CSV is missing, lacks a column, or has an unknown label or split.
    """
    csv_path = Path(csv_path) if csv_path is not None else Path(root) / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise ValueError(f"VisA split file {csv_path} not found; expected layout {VISA_LAYOUT}")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path} lacks columns {missing} (has {reader.fieldnames}); expected {VISA_LAYOUT}")
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    for line, row in enumerate(rows, start=2):
        if row["label"] not in VISA_LABELS:
            raise ValueError(f"{csv_path} line {line}: label {row['label']!r} is not one of {list(VISA_LABELS)}")
        if row["split"] not in VISA_SPLITS:
            raise ValueError(f"{csv_path} line {line}: split {row['split']!r} is not one of {list(VISA_SPLITS)}")
    return rows


def visa_records(
    root: str | Path,
    split: str,
    classes: Iterable[str] | None = None,
    csv_path: str | Path | None = None,
) -> list[SampleRecord]:
    """List the images of a VisA split.

    Args:
        root: data root the CSV paths are relative to.
        split: ``"train"`` or ``"test"``.
        classes: subset of ``object`` names; all when None.
        csv_path: the split CSV; ``<root>/split_csv/1cls.csv`` when None.

    Returns:
        Records in CSV order, grouped by class.

    Raises:
        ValueError: unknown split or class, a path leaving ``root``, or no
            image file for the split.
    """
    check_choice("VisA split", split, VISA_SPLITS)
    rows = [r for r in read_visa_csv(root, csv_path) if r["split"] == split]
    available = list(dict.fromkeys(r["object"] for r in rows))
    records = []
    for class_name in select_classes(available, classes, f"the {split} split of {root}"):
        for row in (r for r in rows if r["object"] == class_name):
            entry = f"the VisA CSV row of image {row['image']!r}"
            path = resolve_inside(root, row["image"], entry)
            label = VISA_LABELS[row["label"]]
            mask_path = resolve_inside(root, row["mask"], entry) if label == 1 and row["mask"] else None
            defect = "good" if label == 0 else "anomaly"
            records.append(SampleRecord(path, label, class_name, mask_path, True, defect))
    if not records:
        raise ValueError(f"no {split} images listed for {root}; expected layout {VISA_LAYOUT}")
    return records


class VisADataset(LayoutDataset):
    """A VisA split under the common sample contract.

    Args:
        root: data root holding ``split_csv/1cls.csv`` and the listed files.
        image_size: output side ``S``; images ``(3, S, S)``, masks ``(S, S)``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        split: ``"train"`` or ``"test"``.
        classes: subset of object names; all when None.
        missing_mask: ``"error"`` (default) or ``"skip"``.
        csv_path: split CSV; ``<root>/split_csv/1cls.csv`` when None.
    """

    title = "VisA"
    find_records = staticmethod(visa_records)
