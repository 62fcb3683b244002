"""Find the scans under a folder: DICOM series (grouped by SeriesInstanceUID), NIfTI, NRRD, MetaImage.

Every file that is not taken is logged with the reason: not DICOM, a DICOMDIR index, a non-image
object (SR, SEG, RT, presentation state, ...), a localiser, a series of one slice (localisers, a
stray slice of another series), a Slicer segmentation (``*.seg.nrrd``), a hidden or temporary file,
not a regular file (a named pipe, socket or device, which is never opened: reading a pipe would
wait forever). Linked folders are followed, each real folder searched once (a link back to a
folder already searched is logged and left out). A DICOM file without the 128-byte preamble is
found (so that loading reports it) rather than left out as not DICOM.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import MediaStorageDirectoryStorage

from .sources import ScanKind, ScanSource

__all__ = ["find_scans"]

logger = logging.getLogger(__name__)

NON_IMAGE_MODALITIES = frozenset(
    {"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "PR", "KO", "REG", "DOC", "RWV", "FID", "PLAN"}
)
"""DICOM Modality values of objects that are not image slices of a volume."""

_FILE_KINDS: tuple[tuple[str, ScanKind | None], ...] = (
    (".seg.nrrd", None),
    (".nii.gz", "nifti"),
    (".nii", "nifti"),
    (".nrrd", "nrrd"),
    (".mha", "mha"),
    (".mhd", "mha"),
)
"""Name endings, longest first; ``None`` marks files that are never scans."""

_COMPANIONS = (".raw", ".zraw", ".raw.gz")
"""Pixel files of ``.mhd`` headers, read through their header."""

_HEADER_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "SeriesInstanceUID",
    "SeriesDescription",
    "ImageType",
    "Rows",
    "NumberOfFrames",
)


def find_scans(root: Path | str, *, exclude: Iterable[Path | str] = ()) -> list[ScanSource]:
    """List the scans in a file or under a folder (recursively), in a deterministic order.

    Args:
        root: a folder or a scan file (a lone DICOM file is a one-slice series and is left
            out: pass its folder).
        exclude: folders to leave out, e.g. an output folder inside ``root``.

    Returns:
        The scans sorted by name; names are unique and usable as file stems.

    Raises:
        FileNotFoundError: when ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist.")
    excluded = {Path(e).resolve() for e in exclude}
    singles: list[tuple[str, ScanKind, Path]] = []
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in _walk(root, excluded):
        kind = _kind_from_name(path)
        if kind == "skip":
            continue
        if kind is not None:
            singles.append((_file_stem(path), kind, path))
            continue
        header = _dicom_image_header(path)
        if header is not None:
            series[header.SeriesInstanceUID].append((path, header))

    scans = [ScanSource(stem, kind, (path,)) for stem, kind, path in singles]
    scans += [scan for uid, members in series.items() if (scan := _series_source(uid, members)) is not None]
    return _unique_names(scans, root)


def _walk(root: Path, excluded: set[Path]) -> list[Path]:
    """Regular files under ``root`` (or ``root`` itself), sorted, without hidden or excluded entries.

    Linked folders are followed once per real folder, so a link loop ends.
    """
    if root.is_file():
        return [root]
    found = []
    searched = {os.path.realpath(root)}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in sorted(dirs) if _searchable(Path(folder, d), excluded, searched)]
        for name in sorted(files):
            path = Path(folder, name)
            if name.startswith("."):
                logger.debug("%s: skipped, hidden or temporary file", path)
            elif _is_regular_file(path):
                found.append(path)
    return found


def _searchable(folder: Path, excluded: set[Path], searched: set[str]) -> bool:
    """Whether to descend into ``folder``: visible, not excluded, its real folder not searched yet (recorded)."""
    if folder.name.startswith(".") or folder.resolve() in excluded:
        return False
    real = os.path.realpath(folder)
    if real in searched:
        logger.info("%s: skipped, a link to %s, a folder already searched", folder, real)
        return False
    searched.add(real)
    return True


def _is_regular_file(path: Path) -> bool:
    """Whether ``path`` is (or links to) a regular file; anything else is logged and never opened."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        logger.warning("%s: skipped, cannot be read (%s)", path, error)
        return False
    if not stat.S_ISREG(mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket or device"
        logger.warning("%s: skipped, %s, not a regular file", path, kind)
        return False
    return True


def _kind_from_name(path: Path) -> ScanKind | str | None:
    """The scan kind from the name, ``"skip"`` for files that are never scans, ``None`` to try DICOM."""
    name = path.name.lower()
    for ending, kind in _FILE_KINDS:
        if name.endswith(ending):
            if kind is None:
                logger.info("%s: skipped, a Slicer segmentation (*.seg.nrrd), not a scan", path)
                return "skip"
            return kind
    if name.endswith(_COMPANIONS):
        logger.debug("%s: skipped, pixel data of a MetaImage header", path)
        return "skip"
    return None


def _file_stem(path: Path) -> str:
    name = path.name
    for ending, _ in _FILE_KINDS:
        if name.lower().endswith(ending):
            return _slug(name[: -len(ending)])
    return _slug(path.stem)


def _dicom_image_header(path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM image slice, or ``None`` (logged) for anything else."""
    try:
        header = _read_tags(path, force=_without_preamble(path))
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        logger.debug("%s: skipped, not DICOM (%s)", path, error)
        return None
    sop_class = header.get("SOPClassUID") or header.file_meta.get("MediaStorageSOPClassUID")
    if sop_class == MediaStorageDirectoryStorage:
        logger.info("%s: skipped, a DICOMDIR (an index of other files)", path)
        return None
    modality = str(header.get("Modality", "")).upper()
    if modality in NON_IMAGE_MODALITIES or "Rows" not in header:
        logger.info("%s: skipped, a non-image DICOM object (Modality %r, %s)", path, modality, _sop_name(sop_class))
        return None
    if "SeriesInstanceUID" not in header:
        logger.info("%s: skipped, DICOM image without SeriesInstanceUID", path)
        return None
    if "LOCALIZER" in [str(v).upper() for v in header.get("ImageType", [])]:
        logger.info("%s: skipped, a localiser image (ImageType %s)", path, list(header.ImageType))
        return None
    return header


def _read_tags(path: Path, force: bool) -> pydicom.Dataset:
    """The discovery tags of a DICOM file; ``force`` reads one without the preamble, which must then hold an image."""
    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS), force=force)
    if force and not {"Rows", "SeriesInstanceUID"} <= set(header.dir()):
        raise InvalidDicomError("no preamble, and no image header either")
    return header


def _without_preamble(path: Path) -> bool:
    """Whether ``path`` looks like DICOM without the preamble: no ``DICM`` at byte 128, a group 2 or 8 tag first."""
    with open(path, "rb") as handle:
        start = handle.read(132)
    return start[128:132] != b"DICM" and start[:2] in (b"\x02\x00", b"\x08\x00")


def _sop_name(sop_class: object) -> str:
    return getattr(sop_class, "name", None) or f"SOP Class {sop_class}"


def _series_source(uid: str, members: list[tuple[Path, pydicom.Dataset]]) -> ScanSource | None:
    """A :class:`ScanSource` for one series; ``None`` (logged) for a single-slice series."""
    unique: dict[str, tuple[Path, pydicom.Dataset]] = {}
    for path, header in sorted(members, key=lambda m: str(m[0])):
        sop = str(header.get("SOPInstanceUID", path))
        if sop in unique:
            logger.info("%s: skipped, same SOPInstanceUID as %s", path, unique[sop][0])
        else:
            unique[sop] = (path, header)
    files = tuple(path for path, _ in unique.values())
    first = next(iter(unique.values()))[1]
    frames = int(first.get("NumberOfFrames", 1) or 1)
    if len(files) == 1 and frames <= 1:
        logger.info("%s: skipped, series %s has a single slice (a localiser or a stray slice)", files[0], uid)
        return None
    modality = str(first.get("Modality", "")).upper() or None
    description = str(first.get("SeriesDescription", "")) or modality or "series"
    return ScanSource(f"{_slug(description)}_{_uid_tail(uid)}", "dicom", files, modality, uid)


def _slug(text: str, limit: int = 64) -> str:
    """``text`` reduced to letters, digits, ``-``, ``_`` and ``.`` (no leading dot), at most ``limit`` characters."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit]
    return slug or "scan"


def _uid_tail(uid: str) -> str:
    """The last 8 digits of a UID (a UID is digits and dots; a header's may hold anything); a hash if it has none."""
    digits = re.sub(r"[^0-9]", "", uid)
    return digits[-8:] if digits else hashlib.sha1(uid.encode("utf-8", "replace")).hexdigest()[:8]


def _unique_names(scans: list[ScanSource], root: Path) -> list[ScanSource]:
    """Give scans that share a name (ignoring case) a suffix hashed from their series UID or path; sort by name.

    A suffixed name that meets a name already taken gets a counter as well, so names stay unique.
    """
    by_name: dict[str, list[ScanSource]] = defaultdict(list)
    for scan in scans:
        by_name[scan.name.lower()].append(scan)
    taken = {name for name, group in by_name.items() if len(group) == 1}
    renamed = []
    for group in by_name.values():
        for scan in group:
            if len(group) > 1:
                key = scan.series_uid or os.path.relpath(scan.files[0], root)
                name = _free_name(f"{scan.name}_{hashlib.sha1(key.encode('utf-8', 'replace')).hexdigest()[:6]}", taken)
                taken.add(name.lower())
                scan = ScanSource(name, scan.kind, scan.files, scan.modality, scan.series_uid)
            renamed.append(scan)
    return sorted(renamed, key=lambda s: (s.name.lower(), s.name))


def _free_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``, ... : the first not in ``taken`` (lower-case names)."""
    candidate, count = name, 1
    while candidate.lower() in taken:
        count += 1
        candidate = f"{name}_{count}"
    return candidate
