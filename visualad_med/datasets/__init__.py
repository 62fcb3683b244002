"""2D anomaly-detection data sets (MVTec AD, VisA, AnomalyCLIP meta.json, MVFA/BMAD).

Every data set returns the common sample dict described in
:mod:`visualad_med.datasets.samples`; :func:`build_dataset` picks one by
layout name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from visualad_med.datasets.images import (
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
    root: str | Path,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    split: str = "test",
    classes: Iterable[str] | None = None,
    missing_mask: str = "error",
) -> AnomalyDataset:
    """Build a data set by layout name.

    Args:
        layout: one of :data:`LAYOUTS` (``mvtec``, ``visa``, ``meta``, ``mvfa``).
        root: data root.
        image_size: output side ``S``; images ``(3, S, S)``, masks ``(S, S)``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        split: split name valid for the layout (``train``/``test``, MVFA ``valid``/``test``).
        classes: subset of class names; all when None.
        missing_mask: ``"error"`` or ``"skip"``.

    Raises:
        ValueError: unknown layout (the message lists the valid names) or any
            error of the chosen data set.
    """
    check_choice("data set layout", layout, LAYOUTS)
    return DATASETS[layout](
        root, image_size=image_size, mean=mean, std=std, split=split, classes=classes, missing_mask=missing_mask
    )


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
