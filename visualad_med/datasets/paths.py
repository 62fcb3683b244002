"""Resolving file paths listed in index files (VisA CSV, meta.json) inside a data root."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath


def resolve_inside(root: str | Path, relative: str, entry: str) -> Path:
    """Join a listed path to the data root, refusing paths that leave it.

    The check is lexical (``..`` is collapsed without following symbolic
    links), so a data root reached through a link still works.

    Args:
        root: data root the listed paths are relative to.
        relative: the listed path (``/`` or ``\\`` separators).
        entry: description of the listing entry, quoted in errors.

    Returns:
        ``root / relative``, normalised.

    Raises:
        ValueError: the path is empty, absolute, or resolves outside ``root``.
    """
    if not relative:
        raise ValueError(f"empty path in {entry}")
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).anchor:
        raise ValueError(f"absolute path {relative!r} in {entry}: paths must be relative to the data root {root}")
    base = os.path.normpath(os.path.abspath(root))
    joined = os.path.normpath(os.path.join(base, relative.replace("\\", "/")))
    if os.path.commonpath([base, joined]) != base:
        raise ValueError(f"path {relative!r} in {entry} leaves the data root {root}")
    return Path(joined)
