"""What a scan is before it is read (:class:`ScanSource`); how reading one fails is
:class:`~visualad_med.errors.ScanLoadError`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ScanKind = Literal["dicom", "nifti", "nrrd", "mha"]

SCAN_KINDS: tuple[str, ...] = ("dicom", "nifti", "nrrd", "mha")


@dataclass(frozen=True)
class ScanSource:
    """One scan found on disk: a DICOM series or a single image file.

    Attributes:
        name: stem for output files, unique (ignoring case) among the scans of one :func:`find_scans`
            call (``<SeriesDescription>_<uid tail>`` for DICOM, the file stem otherwise); whatever the
            headers hold, only letters, digits, ``-``, ``_`` and ``.``, at most 64 characters plus the
            8-digit UID tail and a collision suffix.
        kind: ``"dicom"``, ``"nifti"``, ``"nrrd"`` or ``"mha"`` (MetaImage ``.mha``/``.mhd``).
        files: the files of the scan, sorted by path (a DICOM series is re-sorted by position
            when it is loaded).
        modality: DICOM Modality (``"CT"``, ``"MR"``, ...) when known, else ``None``.
        series_uid: DICOM SeriesInstanceUID, ``None`` for other formats.
    """

    name: str
    kind: ScanKind
    files: tuple[Path, ...]
    modality: str | None = None
    series_uid: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCAN_KINDS:
            raise ValueError(f"kind must be one of {SCAN_KINDS}, got {self.kind!r}.")
        if not self.files:
            raise ValueError(f"scan {self.name!r} has no files.")

    @property
    def path(self) -> Path:
        """The file of a single-file scan, the folder of the first file of a DICOM series."""
        return self.files[0].parent if self.kind == "dicom" else self.files[0]
