"""MVTec AD folder layout (Bergmann et al., CVPR 2019), also used by MTD and others.

Layout::

    <root>/<class>/train/good/*.png
    <root>/<class>/test/good/*.png                      normal, no mask file
    <root>/<class>/test/<defect>/<stem>.png             anomalous
    <root>/<class>/ground_truth/<defect>/<stem>_mask.png

Images may have any extension in :data:`~visualad_med.io.images.IMAGE_EXTENSIONS`;
``root`` may also be a single ``<class>`` folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from visualad_med.io.images import IMAGE_EXTENSIONS, list_images
from visualad_med.datasets.samples import LayoutDataset, SampleRecord, check_choice, select_classes

MVTEC_SPLITS: tuple[str, ...] = ("train", "test")
MVTEC_LAYOUT = "<root>/<class>/{train,test}/<defect>/<image>, <root>/<class>/ground_truth/<defect>/<stem>_mask.png"
NORMAL_FOLDER = "good"


def _is_class_folder(folder: Path) -> bool:
    return any((folder / split).is_dir() for split in MVTEC_SPLITS)


def mvtec_class_folders(root: str | Path) -> dict[str, Path]:
    """Class name -> class folder for an MVTec root (or a single class folder).

    Raises:
        ValueError: ``root`` is not a folder or holds no class folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"MVTec root {root} is not a folder; expected layout {MVTEC_LAYOUT}")
    if _is_class_folder(root):
        return {root.name: root}
    folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and _is_class_folder(p)}
    if not folders:
        raise ValueError(f"no class folder with train/ or test/ in {root}; expected layout {MVTEC_LAYOUT}")
    return folders


def _mask_path(class_folder: Path, defect: str, stem: str) -> Path:
    """The existing ``<stem>_mask.<ext>`` file, or the expected ``.png`` name when none exists."""
    folder = class_folder / "ground_truth" / defect
    for extension in IMAGE_EXTENSIONS:
        candidate = folder / f"{stem}_mask{extension}"
        if candidate.is_file():
            return candidate
    return folder / f"{stem}_mask.png"


def mvtec_records(root: str | Path, split: str, classes: Iterable[str] | None = None) -> list[SampleRecord]:
    """List the images of an MVTec-layout split.

    Args:
        root: data root (or one class folder).
        split: ``"train"`` or ``"test"``.
        classes: subset of class names; all class folders when None.

    Returns:
        Records sorted by class, defect and file name; ``good`` images are
        normal (no mask file, mask zeros).

    Raises:
        ValueError: unknown split or class, or a class folder without images in ``split``.
    """
    check_choice("MVTec split", split, MVTEC_SPLITS)
    folders = mvtec_class_folders(root)
    records = []
    for class_name in select_classes(list(folders), classes, str(root)):
        split_folder = folders[class_name] / split
        found = []
        defects = sorted(p.name for p in split_folder.iterdir() if p.is_dir()) if split_folder.is_dir() else []
        for defect in defects:
            for path in list_images(split_folder / defect):
                if defect == NORMAL_FOLDER:
                    found.append(SampleRecord(path, 0, class_name))
                else:
                    mask_path = _mask_path(folders[class_name], defect, path.stem)
                    found.append(SampleRecord(path, 1, class_name, mask_path, True, defect))
        if not found:
            raise ValueError(f"no images in {split_folder}/<defect>/; expected layout {MVTEC_LAYOUT}")
        records.extend(found)
    return records


class MVTecDataset(LayoutDataset):
    """An MVTec-AD-layout split under the common sample contract.

    Args:
        root: data root holding ``<class>`` folders, or one class folder.
        image_size: output side ``S``; images ``(3, S, S)``, masks ``(S, S)``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        split: ``"train"`` or ``"test"``.
        classes: subset of class names; all when None.
        missing_mask: ``"error"`` (default) or ``"skip"`` for anomalous
            images whose mask is missing or of another size.
    """

    title = "MVTec"
    find_records = staticmethod(mvtec_records)
