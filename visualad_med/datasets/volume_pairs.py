"""Labelled volume sets: each scan with its label volume, from a Decathlon folder or from two folders.

Medical Segmentation Decathlon layout (read with MONAI's ``load_decathlon_datalist``)::

    <root>/dataset.json          {"training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]}
    <root>/imagesTr/<case>.nii.gz
    <root>/labelsTr/<case>.nii.gz

Two folders: every scan under ``scans/`` (any format :func:`~visualad_med.io.find_scans`
reads) is matched by name with a label file under ``labels/`` called ``<name>`` or
``<name>_label``, ``_labels``, ``_seg``, ``_mask`` (any volume extension).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from monai.data import load_decathlon_datalist

from visualad_med.io import ScanSource, find_scans

logger = logging.getLogger(__name__)

LABEL_SUFFIXES: tuple[str, ...] = ("", "_label", "_labels", "_seg", "_mask")
"""Name endings that a label file may add to its scan's name in the two-folder form."""


@dataclass(frozen=True)
class VolumePair:
    """A scan and its label volume (voxels above 0 are anomalous)."""

    scan: ScanSource
    label: Path


def _single_scan(path: Path) -> ScanSource:
    found = find_scans(path)
    if len(found) != 1:
        raise ValueError(f"{path}: expected one scan, found {len(found)}")
    return found[0]


def decathlon_pairs(root: str | Path, split: str = "training") -> list[VolumePair]:
    """The labelled cases of a Decathlon folder's ``split`` list (``training``, or ``test`` if labelled).

    Raises:
        ValueError: no ``dataset.json``, an unknown or empty list, a case without a label, or a
            listed file that is missing.
    """
    root = Path(root)
    listing = root / "dataset.json"
    if not listing.is_file():
        raise ValueError(f"{root} is not a Decathlon folder: {listing} not found (expected dataset.json with "
                         "'training'/'test' lists, imagesTr/, labelsTr/)")
    try:
        items = load_decathlon_datalist(listing, is_segmentation=True, data_list_key=split, base_dir=root)
    except (ValueError, KeyError) as error:
        raise ValueError(f"{listing}: cannot read the {split!r} list ({error})") from None
    pairs = []
    for item in items:
        if not isinstance(item, dict) or "label" not in item:
            raise ValueError(f"{listing}: a {split!r} case has no label: {item}")
        image, label = Path(item["image"]), Path(item["label"])
        for path in (image, label):
            if not path.is_file():
                raise ValueError(f"{listing}: listed file {path} does not exist")
        pairs.append(VolumePair(_single_scan(image), label))
    if not pairs:
        raise ValueError(f"{listing}: the {split!r} list is empty")
    return pairs


def folder_pairs(scans: str | Path, labels: str | Path) -> list[VolumePair]:
    """Scans under ``scans`` matched by name with label files under ``labels``.

    A scan without a label is left out with a warning.

    Raises:
        ValueError: a folder is missing or no scan has a label.
    """
    scans, labels = Path(scans), Path(labels)
    for folder in (scans, labels):
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")
    by_name = {source.name: source.files[0] for source in find_scans(labels)}
    pairs, unmatched = [], []
    for source in find_scans(scans, exclude=[labels]):
        match = next((by_name[source.name + end] for end in LABEL_SUFFIXES if source.name + end in by_name), None)
        if match is None:
            unmatched.append(source.name)
        else:
            pairs.append(VolumePair(source, match))
    if unmatched:
        logger.warning("%d scans under %s have no label under %s and are left out: %s", len(unmatched), scans,
                       labels, ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else ""))
    if not pairs:
        raise ValueError(f"no scan under {scans} has a label under {labels} (a label is named like its scan, "
                         f"optionally ending in {', '.join(end for end in LABEL_SUFFIXES if end)})")
    return pairs


def labelled_volumes(data: str | Path, labels: str | Path | None = None, split: str | None = None
                     ) -> list[VolumePair]:
    """``data`` scans matched with ``labels`` when given, else the ``split`` list (default ``training``)
    of the Decathlon folder ``data``."""
    if labels:
        return folder_pairs(data, labels)
    return decathlon_pairs(data, split or "training")
