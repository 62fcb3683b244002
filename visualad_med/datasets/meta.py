"""AnomalyCLIP ``meta.json`` index (Zhou et al., ICLR 2024): reading and writing.

Format, with every path relative to the data root::

    {"train" | "test": {"<class>": [{"img_path": ..., "mask_path": ... or "",
                                     "cls_name": ..., "specie_name": ..., "anomaly": 0 | 1}]}}

Paths that leave the data root (absolute, or ``..`` resolving outside) are
refused. A class whose anomalous entries all lack ``mask_path`` is taken as a
set without pixel masks (``has_mask=False`` for all its samples, as for an
MVFA set without mask folder); a class where only some lack it goes through the
``missing_mask`` policy.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from visualad_med.datasets.mvfa import MVFA_SPLITS, mvfa_records, mvfa_set_folders
from visualad_med.datasets.mvtec import MVTEC_SPLITS, mvtec_class_folders, mvtec_records
from visualad_med.datasets.paths import resolve_inside
from visualad_med.datasets.samples import LayoutDataset, SampleRecord, check_choice, select_classes
from visualad_med.datasets.visa import VISA_LABELS, read_visa_csv

logger = logging.getLogger(__name__)

META_SOURCE_LAYOUTS: tuple[str, ...] = ("mvtec", "visa", "mvfa")
META_LAYOUT = (
    '<root>/meta.json = {"train"|"test": {class: [{"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}]}}'
)


def read_meta_json(meta_path: str | Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Load and shape-check a meta.json file.

    Raises:
        ValueError: the file is missing, is not JSON, or does not map splits to
            classes to lists of entries.
    """
    meta_path = Path(meta_path)
    if not meta_path.is_file():
        raise ValueError(f"{meta_path} not found; expected layout {META_LAYOUT}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or not all(
        isinstance(classes, dict) and all(isinstance(entries, list) for entries in classes.values())
        for classes in meta.values()
    ):
        raise ValueError(f"{meta_path} does not have the meta.json structure; expected {META_LAYOUT}")
    return meta


def _entry_record(root: Path, class_key: str, entry: Any, where: str) -> SampleRecord:
    if not isinstance(entry, dict) or "img_path" not in entry or "anomaly" not in entry:
        raise ValueError(f"{where}: entry {entry!r} needs 'img_path' and 'anomaly'")
    label = entry["anomaly"]
    if label not in (0, 1) or isinstance(label, bool):
        raise ValueError(f"{where}: entry {entry['img_path']!r} has anomaly={label!r}, expected 0 or 1")
    name = f"{where} entry {entry['img_path']!r}"
    path = resolve_inside(root, str(entry["img_path"]), name)
    mask = str(entry.get("mask_path") or "")
    mask_path = resolve_inside(root, mask, name) if label == 1 and mask else None
    defect = str(entry.get("specie_name") or ("good" if label == 0 else "anomaly"))
    return SampleRecord(path, int(label), str(entry.get("cls_name") or class_key), mask_path, True, defect)


def meta_records(
    root: str | Path,
    split: str,
    classes: Iterable[str] | None = None,
    meta_path: str | Path | None = None,
) -> list[SampleRecord]:
    """List the images of one split of a meta.json.

    Args:
        root: data root the listed paths are relative to.
        split: a top-level key of the file (``"train"``, ``"test"``, ...).
        classes: subset of class keys; all when None.
        meta_path: the index file; ``<root>/meta.json`` when None.

    Returns:
        Records in file order, grouped by class.

    Raises:
        ValueError: unknown split or class, a malformed entry (named), a path
            leaving ``root`` (named), or no entries.
    """
    root = Path(root)
    meta_path = Path(meta_path) if meta_path is not None else root / "meta.json"
    meta = read_meta_json(meta_path)
    check_choice(f"split of {meta_path}", split, list(meta))
    records = []
    for class_key in select_classes(list(meta[split]), classes, f"{meta_path} [{split}]"):
        where = f"{meta_path} [{split}][{class_key}]"
        found = [_entry_record(root, class_key, entry, where) for entry in meta[split][class_key]]
        anomalous = [r for r in found if r.label == 1]
        if anomalous and all(r.mask_path is None for r in anomalous):
            logger.warning("%s: no anomalous entry has a mask_path: image-level metrics only", where)
            found = [SampleRecord(r.path, r.label, r.class_name, None, False, r.defect) for r in found]
        records.extend(found)
    if not records:
        raise ValueError(f"{meta_path} lists no images for split {split!r}; expected layout {META_LAYOUT}")
    return records


class MetaJsonDataset(LayoutDataset):
    """One split of an AnomalyCLIP meta.json under the common sample contract.

    Args:
        root: data root the listed paths are relative to.
        image_size: output side ``S``; images ``(3, S, S)``, masks ``(S, S)``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        split: top-level key of the file (``"train"`` or ``"test"``).
        classes: subset of class keys; all when None.
        missing_mask: ``"error"`` (default) or ``"skip"``.
        meta_path: index file; ``<root>/meta.json`` when None.
    """

    title = "meta.json"
    find_records = staticmethod(meta_records)


def _relative(root: Path, path: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()


def _entries(root: Path, records: list[SampleRecord]) -> dict[str, list[dict[str, Any]]]:
    table: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        has_mask_file = record.label == 1 and record.mask_path is not None and record.mask_path.is_file()
        table.setdefault(record.class_name, []).append(
            {
                "img_path": _relative(root, record.path),
                "mask_path": _relative(root, record.mask_path) if has_mask_file else "",
                "cls_name": record.class_name,
                "specie_name": record.defect,
                "anomaly": record.label,
            }
        )
    return table


def _folder_splits(
    folders: dict[str, Path],
    splits: tuple[str, ...],
    records_fn: Callable[[Path, str, list[str]], list[SampleRecord]],
    root: Path,
) -> dict[str, Any]:
    meta = {}
    for split in splits:
        present = [name for name, folder in folders.items() if (folder / split).is_dir()]
        if present:
            meta[split] = _entries(root, records_fn(root, split, present))
    return meta


def _visa_meta(root: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for row in read_visa_csv(root):
        label = VISA_LABELS[row["label"]]
        meta.setdefault(row["split"], {}).setdefault(row["object"], []).append(
            {
                "img_path": row["image"],
                "mask_path": row["mask"] if label == 1 else "",
                "cls_name": row["object"],
                "specie_name": "good" if label == 0 else "anomaly",
                "anomaly": label,
            }
        )
    return meta


def write_meta_json(root: str | Path, layout: str, output: str | Path | None = None) -> Path:
    """Write an AnomalyCLIP meta.json indexing an MVTec, VisA or MVFA folder.

    MVTec folders give ``train``/``test`` keys, VisA its CSV splits, MVFA
    ``valid``/``test``. Anomalous images without a mask file get ``mask_path: ""``.

    Args:
        root: data root; listed paths are relative to it.
        layout: ``"mvtec"``, ``"visa"`` or ``"mvfa"``.
        output: file to write; ``<root>/meta.json`` when None.

    Returns:
        The path written (atomically: temporary file, then rename).

    Raises:
        ValueError: unknown layout, or the folder does not follow it.
    """
    check_choice("meta.json source layout", layout, META_SOURCE_LAYOUTS)
    root = Path(root)
    if layout == "mvtec":
        meta = _folder_splits(mvtec_class_folders(root), MVTEC_SPLITS, mvtec_records, root)
    elif layout == "mvfa":
        meta = _folder_splits(mvfa_set_folders(root), MVFA_SPLITS, mvfa_records, root)
    else:
        meta = _visa_meta(root)
    if not meta:
        raise ValueError(f"no split with images in {root} for layout {layout!r}")
    output = Path(output) if output is not None else root / "meta.json"
    temporary = output.with_name(output.name + ".tmp")
    temporary.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    temporary.replace(output)
    counts = {split: sum(len(v) for v in classes.values()) for split, classes in meta.items()}
    logger.info("wrote %s (%s)", output, ", ".join(f"{s}: {n} images" for s, n in counts.items()))
    return output
