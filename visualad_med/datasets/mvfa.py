"""MVFA-AD / BMAD medical layout (Huang et al., CVPR 2024; Bao et al., 2024).

Layout, one ``<Name>_AD`` folder per class (``<Name>``)::

    <root>/<Name>_AD/{valid,test}/good/img/*           normal
    <root>/<Name>_AD/{valid,test}/Ungood/img/*         anomalous
    <root>/<Name>_AD/{valid,test}/Ungood/anomaly_mask/*  masks, same file names

BMAD names the mask folder ``label``; both names are accepted. A set without a
mask folder has no pixel masks: every sample of it has ``has_mask=False``
and only image-level metrics apply. ``root`` may be the folder holding the
``<Name>_AD`` folders or one ``<Name>_AD`` folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from visualad_med.io.images import IMAGE_EXTENSIONS, list_images
from visualad_med.datasets.samples import LayoutDataset, SampleRecord, check_choice, select_classes

logger = logging.getLogger(__name__)

MVFA_SPLITS: tuple[str, ...] = ("valid", "test")
MVFA_MASK_FOLDERS: tuple[str, ...] = ("anomaly_mask", "label")
MVFA_LAYOUT = (
    "<root>/<Name>_AD/{valid,test}/{good,Ungood}/img/<image>, <root>/<Name>_AD/<split>/Ungood/anomaly_mask/<image>"
)


def _is_set_folder(folder: Path) -> bool:
    return any((folder / split / kind / "img").is_dir() for split in MVFA_SPLITS for kind in ("good", "Ungood"))


def _class_name(folder: Path) -> str:
    return folder.name[: -len("_AD")] if folder.name.endswith("_AD") and len(folder.name) > 3 else folder.name


def mvfa_set_folders(root: str | Path) -> dict[str, Path]:
    """Class name -> ``<Name>_AD`` folder, for a root of sets or one set folder.

    Raises:
        ValueError: ``root`` is not a folder or holds no set in the MVFA layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"MVFA root {root} is not a folder; expected layout {MVFA_LAYOUT}")
    if _is_set_folder(root):
        return {_class_name(root): root}
    folders = {_class_name(p): p for p in sorted(root.iterdir()) if p.is_dir() and _is_set_folder(p)}
    if not folders:
        raise ValueError(f"no <Name>_AD set folder in {root}; expected layout {MVFA_LAYOUT}")
    return folders


def _find_mask(mask_folder: Path, image: Path) -> Path:
    """The mask with the image's file name, else with its stem and any image extension."""
    same_name = mask_folder / image.name
    if same_name.is_file():
        return same_name
    for extension in IMAGE_EXTENSIONS:
        candidate = mask_folder / f"{image.stem}{extension}"
        if candidate.is_file():
            return candidate
    return same_name


def mvfa_records(root: str | Path, split: str, classes: Iterable[str] | None = None) -> list[SampleRecord]:
    """List the images of an MVFA/BMAD split.

    Args:
        root: folder of ``<Name>_AD`` sets, or one set folder.
        split: ``"valid"`` or ``"test"``.
        classes: subset of class names (``<Name>``); all when None.

    Returns:
        Records sorted by class, normal before anomalous, then by file name.

    Raises:
        ValueError: unknown split or class, or a set without images in ``split``.
    """
    check_choice("MVFA split", split, MVFA_SPLITS)
    folders = mvfa_set_folders(root)
    records = []
    for class_name in select_classes(list(folders), classes, str(root)):
        split_folder = folders[class_name] / split
        mask_folders = [split_folder / "Ungood" / name for name in MVFA_MASK_FOLDERS]
        mask_folder = next((folder for folder in mask_folders if folder.is_dir()), None)
        has_masks = mask_folder is not None
        normals = list_images(split_folder / "good" / "img")
        anomalies = list_images(split_folder / "Ungood" / "img")
        if not normals and not anomalies:
            raise ValueError(f"no images in {split_folder}/{{good,Ungood}}/img; expected layout {MVFA_LAYOUT}")
        if anomalies and not has_masks:
            logger.info("%s has no Ungood/anomaly_mask folder: image-level metrics only", split_folder)
        records += [SampleRecord(p, 0, class_name, None, has_masks) for p in normals]
        records += [
            SampleRecord(p, 1, class_name, _find_mask(mask_folder, p) if has_masks else None, has_masks, "Ungood")
            for p in anomalies
        ]
    return records


class MVFADataset(LayoutDataset):
    """An MVFA-AD / BMAD medical split under the common sample contract.

    Args:
        root: folder of ``<Name>_AD`` sets, or one set folder.
        image_size: output side ``S``; images ``(3, S, S)``, masks ``(S, S)``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        split: ``"valid"`` or ``"test"``.
        classes: subset of class names (``<Name>`` without ``_AD``); all when None.
        missing_mask: ``"error"`` (default) or ``"skip"`` for anomalous images
            whose mask file is missing or of another size in a set that has masks.

    Attributes:
        has_pixel_masks: False when no set has masks: evaluate image metrics only.
    """

    title = "MVFA"
    find_records = staticmethod(mvfa_records)
