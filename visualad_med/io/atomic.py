"""Write files under a temporary name and rename, so no reader ever sees half a file.

A temporary is named ``.<target>.<pid>.<random>.tmp<suffixes>``: a writer killed before its rename
(``kill -9``, a power cut) leaves it behind, and :func:`remove_stale_temporaries` removes those whose
writer process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp(\.[^.]+)*$")
"""A temporary of :func:`atomic_path`; ``pid`` is its writer's process id."""


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On an exception the temporary file is removed and ``target`` is untouched.
    The temporary name keeps ``target``'s suffixes so writers that pick the
    format from the extension (``.nii.gz``, ``.seg.nrrd``) still work, and holds
    the writer's process id (see :func:`remove_stale_temporaries`); the file
    gets the usual permissions (``0o666`` less the umask), not ``mkstemp``'s 0600.
    """
    target = Path(target)
    suffix = "".join(target.suffixes)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=f".tmp{suffix}",
                                    dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path, older_than: float) -> list[Path]:
    """Remove the temporaries in ``folder`` left by dead writers; return them.

    A temporary is stale when its modification time is before ``older_than`` (``time.time()``
    seconds, e.g. the start of this run) and the process id in its name is not alive. What cannot
    be removed is logged and left.
    """
    removed = []
    for path in sorted(Path(folder).glob(".*.tmp*")):
        match = _TEMPORARY.match(path.name)
        if match is None or _process_alive(int(match["pid"])):
            continue
        try:
            if path.stat().st_mtime >= older_than:
                continue
            path.unlink()
        except OSError as error:
            logger.warning("%s: stale temporary not removed (%s)", path, error.strerror or error)
            continue
        logger.info("%s: removed, a temporary of writer process %s, which is gone", path, match["pid"])
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):
        return False
    return True
