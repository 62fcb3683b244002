"""The common sample contract shared by every 2D data set layout.

A layout module (MVTec, VisA, meta.json, MVFA) only turns a folder into a list
of :class:`SampleRecord`; :class:`AnomalyDataset` checks the masks, reads and
preprocesses the files, and returns one dict per image:

* ``image``: ``float32`` tensor ``(3, S, S)``, normalised with the given mean/std;
* ``valid``: ``int64`` ``(4,)`` ``(top, left, height, width)`` of the image inside the square
  (the whole square unless the ``pad`` resize policy letterboxed it);
* ``mask``: ``float32`` tensor ``(S, S)`` of 0/1 (zeros for normal images);
* ``label``: ``int``, 0 normal, 1 anomalous;
* ``class_name``: ``str``; ``path``: ``str`` (the image file);
* ``has_mask``: ``bool``, False when no ground-truth mask exists for the image
  (its ``mask`` is then zeros and must not enter pixel metrics).

An unreadable or corrupted image is logged with its path, counted in
:attr:`AnomalyDataset.skipped` and returned as ``None``; pass
:func:`collate_skip_invalid` to the ``DataLoader`` to drop such items.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from visualad_med.io.images import RESIZE_POLICIES, check_normalisation, image_size_of, letterbox_mask
from visualad_med.io.images import mask_to_tensor, to_model_input
from visualad_med.io.images import read_mask, read_rgb

logger = logging.getLogger(__name__)

MISSING_MASK_POLICIES: tuple[str, ...] = ("error", "skip")
"""``error``: a missing or mismatched mask raises at construction; ``skip``: the
image stays (image metrics) with ``has_mask=False`` (no pixel metrics) and a warning."""

READ_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, SyntaxError)
"""Exceptions Pillow raises for missing, truncated or corrupted files."""

_MAX_LISTED = 10


@dataclass(frozen=True)
class SampleRecord:
    """One image of a data set, before any file is read.

    Attributes:
        path: image file.
        label: 0 normal, 1 anomalous.
        class_name: object / organ class the image belongs to.
        mask_path: mask file, or None (normal image, or no mask available).
        has_mask: whether a ground-truth mask exists (always True for a normal
            image of a set with masks, whose mask is all zeros).
        defect: defect type (``good`` for normal images).
    """

    path: Path
    label: int
    class_name: str
    mask_path: Path | None = None
    has_mask: bool = True
    defect: str = "good"


def check_choice(name: str, value: str, valid: Sequence[str]) -> None:
    """Raise a ValueError listing ``valid`` when ``value`` is not one of them."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def select_classes(available: Sequence[str], classes: Iterable[str] | None, where: str) -> list[str]:
    """Keep the requested classes, in the order given, or all available ones.

    Raises:
        ValueError: a requested class is not available (the message lists the available ones).
    """
    if classes is None:
        return list(available)
    wanted = list(classes)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise ValueError(f"classes {unknown} not found in {where}; available: {', '.join(available) or 'none'}")
    return wanted


def _mask_problem(record: SampleRecord) -> str | None:
    """Why the record's mask cannot be used, or None when it can (or is not needed)."""
    if record.label == 0 or not record.has_mask:
        return None
    if record.mask_path is None or not record.mask_path.is_file():
        expected = f" (expected {record.mask_path})" if record.mask_path is not None else ""
        return f"no mask for anomalous image {record.path}{expected}"
    try:
        mask_size = image_size_of(record.mask_path)
    except READ_ERRORS as err:
        return f"unreadable mask {record.mask_path} ({err})"
    try:
        size = image_size_of(record.path)
    except READ_ERRORS:
        return None  # the image itself is reported and skipped when read
    if mask_size != size:
        return (
            f"mask {record.mask_path} is {mask_size[0]}x{mask_size[1]} (HxW) "
            f"but image {record.path} is {size[0]}x{size[1]}"
        )
    return None


def check_masks(records: Sequence[SampleRecord], missing_mask: str) -> list[SampleRecord]:
    """Apply the missing-mask policy to every anomalous record.

    Args:
        records: the data set's records.
        missing_mask: ``"error"`` or ``"skip"`` (see :data:`MISSING_MASK_POLICIES`).

    Returns:
        The records, with ``has_mask=False`` where the mask is missing,
        unreadable or of another size than its image (policy ``skip``).

    Raises:
        ValueError: policy ``error`` and at least one such mask; the message
            names the files.
    """
    check_choice("missing_mask policy", missing_mask, MISSING_MASK_POLICIES)
    checked, problems = [], []
    for record in records:
        problem = _mask_problem(record)
        if problem is None:
            checked.append(record)
            continue
        problems.append(problem)
        checked.append(replace(record, has_mask=False))
        if missing_mask == "skip":
            logger.warning("%s: image kept for image metrics only (has_mask=False)", problem)
    if problems and missing_mask == "error":
        listed = "\n  ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise ValueError(
            f"{len(problems)} mask problem(s) (pass missing_mask='skip' to evaluate them without pixel metrics):"
            f"\n  {listed}{more}"
        )
    return checked


class SkipCounter:
    """Counts skipped files across ``DataLoader`` worker processes (shared memory)."""

    def __init__(self) -> None:
        self._value = multiprocessing.Value("i", 0)

    def increment(self) -> None:
        """Add one skipped file."""
        with self._value.get_lock():
            self._value.value += 1

    @property
    def value(self) -> int:
        """Number of files skipped so far."""
        return int(self._value.value)


def skip_unreadable(counter: SkipCounter, path: Path | str, reason: object) -> None:
    """Log an unreadable image or mask file with its path and count the skipped sample."""
    counter.increment()
    logger.warning("skipping sample: unreadable file %s (%s)", path, reason)


def collate_skip_invalid(batch: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """``DataLoader`` collate function that drops items returned as ``None``.

    Args:
        batch: items from a data set's ``__getitem__``; ``None`` marks an unreadable file.

    Returns:
        The default collation of the valid items (``image`` ``(B, 3, S, S)``,
        ``mask`` ``(B, S, S)``, ``label`` ``(B,)``, lists for strings), or
        ``None`` when every item of the batch was invalid.
    """
    valid = [item for item in batch if item is not None]
    return default_collate(valid) if valid else None


class AnomalyDataset(Dataset):
    """A list of :class:`SampleRecord` served under the common sample contract.

    Args:
        records: the images of the set (built by a layout module).
        image_size: output side ``S`` in pixels.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        missing_mask: ``"error"`` or ``"skip"``, see :func:`check_masks`.
        name: short description used in logs and errors.
        resize: ``squash`` (to ``S x S``) or ``pad`` (aspect kept, padded to a square, as volume
            slices are); see :data:`~visualad_med.io.images.RESIZE_POLICIES`.

    Attributes:
        records: the checked records, in a fixed (sorted) order.
        classes: class names, in order of first appearance.
        has_pixel_masks: whether any image has a usable ground-truth mask;
            False means only image-level metrics can be computed.
        skipped: number of unreadable images met so far (all workers).
    """

    def __init__(
        self,
        records: Sequence[SampleRecord],
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        missing_mask: str = "error",
        name: str = "data set",
        resize: str = "squash",
    ) -> None:
        check_normalisation(image_size, mean, std)
        check_choice("resize policy", resize, RESIZE_POLICIES)
        self.resize = resize
        if not records:
            raise ValueError(f"{name}: no images")
        self.name = name
        self.image_size = image_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.records = check_masks(records, missing_mask)
        self.classes = list(dict.fromkeys(r.class_name for r in self.records))
        self.has_pixel_masks = any(r.has_mask for r in self.records)
        self._skipped = SkipCounter()
        logger.info("%s", self.summary())

    @property
    def skipped(self) -> int:
        """Number of unreadable images met so far."""
        return self._skipped.value

    def __len__(self) -> int:
        return len(self.records)

    def counts(self) -> dict[str, dict[str, int]]:
        """File counts per class: ``normal``, ``anomalous``, ``anomalous_with_mask``."""
        table: dict[str, dict[str, int]] = {}
        for record in self.records:
            row = table.setdefault(record.class_name, {"normal": 0, "anomalous": 0, "anomalous_with_mask": 0})
            if record.label == 0:
                row["normal"] += 1
            else:
                row["anomalous"] += 1
                row["anomalous_with_mask"] += int(record.has_mask)
        return table

    def summary(self) -> str:
        """One line per class with the file counts, for logs and reports."""
        lines = [f"{self.name}: {len(self.records)} images, pixel masks: {'yes' if self.has_pixel_masks else 'no'}"]
        for class_name, row in self.counts().items():
            lines.append(
                f"  {class_name}: {row['normal']} normal, {row['anomalous']} anomalous "
                f"({row['anomalous_with_mask']} with mask)"
            )
        return "\n".join(lines)

    def normal_records(self) -> list[SampleRecord]:
        """The records of normal images (sources for synthetic anomalies)."""
        return [r for r in self.records if r.label == 0]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        """Read and preprocess one image (see the module docstring for the dict).

        Returns:
            The sample dict, or ``None`` when the image or its mask cannot be
            read (logged with the path and counted in :attr:`skipped`).
        """
        record = self.records[index]
        current = record.path
        try:
            image = read_rgb(current)
            mask = None
            if record.label == 1 and record.has_mask:
                current = record.mask_path
                mask = read_mask(current)
        except READ_ERRORS as err:
            skip_unreadable(self._skipped, current, err)
            return None
        size = self.image_size
        image_tensor, placement = to_model_input(image, size, self.mean, self.std, self.resize)
        if mask is None:
            mask_tensor = torch.zeros(size, size, dtype=torch.float32)
        elif self.resize == "pad":
            mask_tensor = letterbox_mask(mask, size, placement)
        else:
            mask_tensor = mask_to_tensor(mask, size)
        return {
            "image": image_tensor,
            "valid": torch.tensor(placement),
            "mask": mask_tensor,
            "label": int(record.label),
            "class_name": record.class_name,
            "path": str(record.path),
            "has_mask": bool(record.has_mask),
        }


class LayoutDataset(AnomalyDataset):
    """A split of a folder layout: the layout only says how to list its records.

    Subclasses set :attr:`title` (for logs) and :meth:`find_records`, called as
    ``find_records(root, split, classes, **options)``.

    Args:
        root: data root of the layout.
        image_size: output side ``S``; images ``(3, S, S)``, masks ``(S, S)``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        split: split name valid for the layout.
        classes: subset of class names; all when None.
        missing_mask: ``"error"`` (default) or ``"skip"``, see :func:`check_masks`.
        resize: ``squash`` or ``pad`` (see :class:`AnomalyDataset`).
        options: layout-specific options (e.g. the VisA CSV or meta.json path).
    """

    title = "data set"

    @staticmethod
    def find_records(root, split, classes, **options) -> list[SampleRecord]:
        raise NotImplementedError

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        split: str = "test",
        classes: Iterable[str] | None = None,
        missing_mask: str = "error",
        resize: str = "squash",
        **options: Any,
    ) -> None:
        records = type(self).find_records(root, split, classes, **options)
        super().__init__(records, image_size, mean, std, missing_mask, name=f"{self.title} {root} [{split}]",
                         resize=resize)
