"""Resolve user-supplied relative paths strictly inside a job folder.

Every file the server hands out or reads on a request's behalf goes through
:func:`resolve_inside`: the path is relative, has no ``..``, and after resolving
symlinks it still lies inside the job folder. Anything else is refused.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class UnsafePath(ValueError):
    """A requested path that is absolute, climbs out, or resolves outside its job folder."""


def resolve_inside(root: Path, relative: str, *, must_exist: bool = True) -> Path:
    if not relative or "\x00" in relative or "\\" in relative:
        raise UnsafePath(f"{relative!r}: not a plain relative path")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or relative.startswith("~"):
        raise UnsafePath(f"{relative!r}: absolute paths are not served; give a path inside the job folder")
    if any(part == ".." for part in pure.parts):
        raise UnsafePath(f"{relative!r}: '..' is not allowed")
    base = root.resolve()
    target = (base / pure).resolve(strict=False)
    if not target.is_relative_to(base):
        raise UnsafePath(f"{relative!r}: resolves outside the job folder (symlink?)")
    if must_exist and not target.exists():
        raise FileNotFoundError(relative)
    return target


def relative_to_job(job_dir: Path, output_dir: Path, event_path: str | None) -> str | None:
    """A path from the event stream (relative to output_dir) as a path relative to the job folder.

    Returns None when the event names something outside the job folder (never served).
    """
    if not event_path:
        return None
    candidate = Path(event_path)
    full = candidate if candidate.is_absolute() else output_dir / candidate
    try:
        return full.resolve(strict=False).relative_to(job_dir.resolve()).as_posix()
    except ValueError:
        return None
