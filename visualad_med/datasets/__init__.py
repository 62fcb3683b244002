"""2D anomaly-detection data sets (MVTec AD, VisA, AnomalyCLIP meta.json, MVFA/BMAD).

Every data set returns the common sample dict described in
:mod:`visualad_med.datasets.samples`; :func:`build_dataset` picks one by
layout name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from visualad_med.io.images import (
    IMAGE_EXTENSIONS,
    image_to_tensor,
    list_images,
    mask_to_tensor,
    pil_to_rgb_array,
    read_mask,
    read_rgb,
)
from visualad_med.datasets.meta import MetaJsonDataset, meta_records, write_meta_json
from visualad_med.datasets.mvfa import MVFADataset, mvfa_records
from visualad_med.datasets.mvtec import MVTecDataset, mvtec_records
from visualad_med.datasets.samples import (
    MISSING_MASK_POLICIES,
    AnomalyDataset,
    SampleRecord,
    check_choice,
    collate_skip_invalid,
)
from visualad_med.datasets.visa import VisADataset, visa_records

DATASETS: dict[str, type[AnomalyDataset]] = {
    "mvtec": MVTecDataset,
    "visa": VisADataset,
    "meta": MetaJsonDataset,
    "mvfa": MVFADataset,
}
"""Layout name -> data set class."""

LAYOUTS: tuple[str, ...] = tuple(DATASETS)


def build_dataset(
    layout: str,
    root: str | Path | Sequence[str | Path],
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    split: str = "test",
    classes: Iterable[str] | None = None,
    missing_mask: str = "error",
    resize: str = "squash",
) -> AnomalyDataset:
    """Build a data set by layout name, from one data root or several.

    Args:
        layout: one of :data:`LAYOUTS` (``mvtec``, ``visa``, ``meta``, ``mvfa``).
        root: data root, or a list of roots read with the same layout and merged
            into one set (a class name found under two roots becomes ``<root name>/<class>``).
        image_size: output side ``S``; images ``(3, S, S)``, masks ``(S, S)``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        split: split name valid for the layout (``train``/``test``, MVFA ``valid``/``test``).
        classes: subset of class names; all when None (with several roots, classes
            missing from a root are simply not taken from it).
        missing_mask: ``"error"`` or ``"skip"``.
        resize: ``squash`` (to ``S x S``) or ``pad`` (aspect kept, padded, as volume slices are).

    Raises:
        ValueError: unknown layout (the message lists the valid names), no root, or any
            error of the chosen data set.
    """
    check_choice("data set layout", layout, LAYOUTS)
    if isinstance(root, (str, Path)):
        return DATASETS[layout](root, image_size=image_size, mean=mean, std=std, split=split, classes=classes,
                                missing_mask=missing_mask, resize=resize)
    roots = [Path(r) for r in root]
    if not roots:
        raise ValueError("no data root given")
    if len(roots) == 1:
        return build_dataset(layout, roots[0], image_size, mean, std, split, classes, missing_mask, resize)
    parts = [DATASETS[layout](r, image_size=image_size, mean=mean, std=std, split=split,
                              classes=_classes_under(layout, r, split, classes), missing_mask=missing_mask)
             for r in roots]
    return AnomalyDataset(_merged_records(roots, parts), image_size, mean, std, missing_mask,
                          name=f"{layout} {', '.join(map(str, roots))} [{split}]", resize=resize)


def _classes_under(layout: str, root: Path, split: str, classes: Iterable[str] | None) -> list[str] | None:
    """The requested classes that ``root`` holds (all when ``classes`` is None)."""
    if classes is None:
        return None
    held = {record.class_name for record in DATASETS[layout].find_records(root, split, None)}
    return [name for name in classes if name in held]


def _merged_records(roots: list[Path], parts: list[AnomalyDataset]) -> list[SampleRecord]:
    """The records of every root, a class name found under two roots prefixed with its root's name."""
    owners = Counter(name for part in parts for name in part.classes)
    merged = []
    for root, part in zip(roots, parts):
        for record in part.records:
            if owners[record.class_name] > 1:
                record = replace(record, class_name=f"{root.name}/{record.class_name}")
            merged.append(record)
    return merged


def class_balanced_weights(dataset: AnomalyDataset) -> torch.Tensor:
    """``(N,)`` sampling weight of each record, ``1 / (number of records of its class)``.

    Drawn with replacement, every class then fills the same share of the batches
    whatever its size, so a large class does not drown the others.
    """
    sizes = Counter(record.class_name for record in dataset.records)
    return torch.tensor([1.0 / sizes[record.class_name] for record in dataset.records], dtype=torch.float64)


def class_sampling(dataset: AnomalyDataset, balance: bool | None = None) -> tuple[bool, torch.Tensor | None]:
    """Whether training draws ``dataset``'s classes equally often (``None``: when it holds more than one),
    and the sampling weights that do it (:func:`class_balanced_weights`; ``None``: plain shuffling)."""
    balanced = len(dataset.classes) > 1 if balance is None else bool(balance)
    return balanced, class_balanced_weights(dataset) if balanced else None


__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "MISSING_MASK_POLICIES",
    "AnomalyDataset",
    "MVFADataset",
    "MVTecDataset",
    "MetaJsonDataset",
    "SampleRecord",
    "VisADataset",
    "build_dataset",
    "class_balanced_weights",
    "class_sampling",
    "collate_skip_invalid",
    "image_to_tensor",
    "list_images",
    "mask_to_tensor",
    "meta_records",
    "mvfa_records",
    "mvtec_records",
    "pil_to_rgb_array",
    "read_mask",
    "read_rgb",
    "visa_records",
    "write_meta_json",
]
