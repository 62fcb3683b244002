"""One run at a time per output folder: an exclusive ``flock`` on ``<folder>/.visualad_med.lock``.

The lock file holds the process id and command line of the run holding it, so a second run can
name the process it meets (ranks holding it shared write nothing). The kernel releases the lock
when its holder ends, however it ends (``kill -9`` included); the holder removes the file when
done (one left by a killed run means nothing unlocked). Under ``torchrun`` the ranks of one run
share the folder: each holds the folder lock shared (left in place) and its own
``.visualad_med.rank<r>.lock`` exclusively, so a plain run and a distributed one, or two
distributed ones, still exclude each other.

Not ``filelock``: its ``FileLock`` is exclusive only (a run's second rank is refused), and its
shareable ``ReadWriteLock`` is an SQLite database that cannot also hold the holder's name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from visualad_med.errors import SettingError

LOCK_NAME = ".visualad_med.lock"


@contextlib.contextmanager
def lock_output_folder(folder: Path, rank: int = 0, world: int = 1) -> Iterator[None]:
    """Hold ``folder``'s lock for the ``with`` block.

    Args:
        folder: the output folder (it exists).
        rank, world: this process's rank and the number of processes (``torchrun``).

    Raises:
        SettingError: another run holds the lock; the message names the folder and that process.
    """
    folder = Path(folder)
    with contextlib.ExitStack() as stack:
        if world == 1:
            stack.enter_context(_flock(folder, folder / LOCK_NAME, fcntl.LOCK_EX))
        else:
            stack.enter_context(_flock(folder, folder / LOCK_NAME, fcntl.LOCK_SH))
            stack.enter_context(_flock(folder, folder / f".visualad_med.rank{rank}.lock", fcntl.LOCK_EX))
        yield


@contextlib.contextmanager
def _flock(folder: Path, path: Path, mode: int) -> Iterator[None]:
    """Hold a ``flock`` of ``mode`` on ``path``; refuse at once when another process holds it.

    An exclusive holder writes its process id and command line into the file and removes it
    when done, still holding the lock; a run that locked the file just before it was removed
    sees it is gone and locks the new one instead.
    """
    descriptor = _locked_descriptor(folder, path, mode)
    try:
        if mode == fcntl.LOCK_EX:
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"pid {os.getpid()}: {' '.join(sys.argv)}\n".encode("utf-8", "replace"))
        yield
        if mode == fcntl.LOCK_EX:
            path.unlink(missing_ok=True)
    finally:
        os.close(descriptor)


def _locked_descriptor(folder: Path, path: Path, mode: int) -> int:
    """A descriptor of ``path`` holding a ``flock`` of ``mode``, the file still at ``path``."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise SettingError("output", f"output folder {folder} is in use by another run ({_holder(path)}); "
                               "wait for it to end or choose another output folder") from None
        if _same_file(descriptor, path):
            return descriptor
        os.close(descriptor)


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``descriptor``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _holder(path: Path) -> str:
    """What the lock file says of the process holding it."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "a process that wrote no name, e.g. a torchrun rank"
