"""Writing to disk fails loudly and in one line: which folder, how much is needed and free, what to do.

Used by the caches and the checkpoints: an ``OSError`` while writing (a full disk, a
quota, a read-only or lost mount) is never taken for a bad input file; it stops the run
with a :class:`StorageError` that the command line prints as one line.
"""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path

DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
# Errors of the disk, not of what is written: a write that meets one stops with a StorageError.
DISK_ERRORS = DISK_FULL | {errno.EROFS}


class StorageError(RuntimeError):
    """A write that failed for a reason of the disk, not of the data (message: one line)."""

    def __init__(self, message: str, *, folder: Path, needed: int | None = None, free: int | None = None, errno_: int | None = None):
        super().__init__(message)
        self.folder = Path(folder)
        self.needed = needed
        self.free = free
        self.errno = errno_


def human_bytes(count: int | float | None) -> str:
    if count is None:
        return "?"
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the disk holding ``folder`` (its nearest existing parent), None if unknown."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def folder_bytes(folder: str | Path | None) -> int:
    """Total size of the files under ``folder`` (0 if absent)."""
    if folder is None or not Path(folder).exists():
        return 0
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            pass
    return total


def storage_error(error: OSError, folder: str | Path, *, needed: int | None, what: str, fix: str) -> StorageError:
    """One line for ``error`` raised while ``what`` under ``folder``; ``fix`` says what to do."""
    folder = Path(folder).absolute()
    free = free_bytes(folder)
    amount = f"needs about {human_bytes(needed)} more, {human_bytes(free)} free" if needed else f"{human_bytes(free)} free"
    if error.errno in DISK_FULL:
        cause = "disk full" if error.errno == errno.ENOSPC else "disk quota exceeded"
    else:
        cause = f"cannot write ({error.strerror or error}{f': {error.filename}' if error.filename else ''})"
    message = f"{cause} while {what} in {folder}: {amount}; {fix}"
    return StorageError(message, folder=folder, needed=needed, free=free, errno_=error.errno)


@contextmanager
def disk_errors(folder: str | Path, what: str, fix: str = "free some space (or write elsewhere) and run again"):
    """Turn a disk's error (full, quota, read-only) inside the block into one
    :class:`StorageError` line; any other error passes unchanged."""
    try:
        yield
    except StorageError:
        raise
    except OSError as error:
        if error.errno in DISK_ERRORS:
            raise storage_error(error, folder, needed=None, what=what, fix=fix) from error
        raise
