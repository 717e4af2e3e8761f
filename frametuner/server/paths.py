"""Paths from requests: strictly inside a job folder, or inside the roots the server was given.

Every file the server hands out or reads on a request's behalf goes through
:func:`resolve_inside`: the path is relative, has no ``..``, and after resolving
symlinks it still lies inside the job folder. Anything else is refused.

A config submitted over HTTP goes through :func:`confine_keys` for every key the schema
marks as a path (``frametuner.config.schema.path_fields``): inputs must lie inside the
job's folder, the data dir, the examples folder or an ``--allow-path`` root; outputs
inside the job's folder. A refusal reads the same whether or not the path exists.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..config.schema import PATH_MODEL, PATH_NAME, PATH_OUTPUT, PathKey


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


# ---------------------------------------------------------------------- confinement of submitted configs
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Roots:
    """Where a config submitted over HTTP may point: the job's folder (read and write) and read-only roots.

    ``read`` holds the server's data dir, its examples folder and every ``--allow-path``
    root. A path is tested after resolving symlinks; the refusal never depends on whether
    the path exists, and never shows what it resolved to.
    """

    job: Path
    read: tuple[Path, ...] = ()

    def describe(self) -> str:
        return ", ".join(["the job's folder"] + [str(Path(root)) for root in self.read])

    def inside(self, path: Path, *, write: bool = False, resolved: bool = False) -> bool:
        """Whether ``path`` lies in a root; ``resolved``: compare with the roots' resolved forms only."""
        roots = [Path(self.job)] if write else [Path(self.job), *map(Path, self.read)]
        forms = [root.resolve() for root in roots]
        if not resolved:
            forms += [Path(os.path.normpath(root.absolute())) for root in roots]
        return any(path.is_relative_to(form) for form in forms)


def _outside(value: str, roots: Roots) -> str:
    return (
        f"{value!r} is outside the folders this server may use ({roots.describe()}); "
        "move the file there, or restart the server with --allow-path DIR for its folder"
    )


def confine_path(value: str, base: Path, roots: Roots, *, write: bool = False) -> tuple[Path | None, str | None]:
    """``value`` (relative to ``base``) as a resolved path inside ``roots``: (path, None), or (None, why).

    The path is made absolute and normalised as text first, then its symlinks are resolved;
    both must lie inside. ``write``: only the job's folder.
    """
    if not value.strip() or "\x00" in value:
        return None, f"{value!r} is not a path"
    refusal = (
        f"{value!r} must be inside the job's folder; give a relative path, or leave it empty for the default"
        if write else _outside(value, roots)
    )
    given = Path(value.strip()).expanduser()
    lexical = Path(os.path.normpath(given if given.is_absolute() else base / given))
    if not roots.inside(lexical, write=write):  # decided on the text alone: nothing outside is looked at
        return None, refusal
    resolved = lexical.resolve(strict=False)
    if not roots.inside(resolved, write=write, resolved=True):  # a symlink that leads out
        return None, refusal
    return resolved, None


def is_plain_name(value: str) -> bool:
    return bool(value) and value not in (".", "..") and not any(char in value for char in "/\\\x00")


def confine_keys(
    values: dict[str, Any], keys: dict[str, PathKey], base: Path, roots: Roots, *, write_base: Path | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Confine the path-bearing keys of one mapping (``keys``: the schema's ``path_fields``).

    Returns (``{key: resolved path}`` for accepted ones, ``{key: message}`` for refused ones).
    Inputs resolve against ``base``; outputs against ``write_base`` (default: the job's folder).
    A key's keywords ('latest') pass as they are; values that are not strings are left to
    the schema's own validation.
    """
    accepted: dict[str, str] = {}
    refused: dict[str, str] = {}
    for key, (kind, keywords) in keys.items():
        value = values.get(key)
        if not isinstance(value, str) or not value.strip() or value in keywords:
            continue
        if kind == PATH_NAME:
            if not is_plain_name(value):
                refused[key] = f"{value!r} must be a plain name (no '/', '\\' or '..'): it names a folder inside the job's output"
            continue
        if kind == PATH_MODEL and HUB_ID.fullmatch(value) and ".." not in value:
            continue  # a hub id (or a folder of that name inside the job's folder, where jobs run)
        if kind == PATH_OUTPUT:
            path, problem = confine_path(value, write_base or roots.job, roots, write=True)
        else:
            path, problem = confine_path(value, base, roots)
        if problem:
            refused[key] = problem
        else:
            accepted[key] = str(path)
    return accepted, refused
