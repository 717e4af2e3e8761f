"""Cache files on disk: content-addressed names, atomic writes, validation on read.

A cache entry is one safetensors file whose name is a hash of everything that decides its
contents. It is written to a hidden temporary file beside its final name and renamed into
place, so a reader (or a rerun after a crash) sees either the complete file or nothing.
Temporaries left by a killed process are swept by the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")  # .<final name>.<pid>.tmp


class CorruptCacheEntry(Exception):
    """A cache file that cannot be read or does not hold what its key promises."""

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def cache_key(parts: Mapping[str, Any]) -> str:
    """A stable 32-hex name for ``parts`` (any JSON-able description of the entry)."""
    text = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def atomic_save(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` so that ``path`` is never seen half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}, str(temporary), metadata=metadata)
        with open(temporary, "rb") as handle:  # on disk before the rename, so a power cut cannot leave an empty entry
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def check_entry(path: str | Path, expected: Mapping[str, tuple[tuple[int, ...] | None, torch.dtype | None]]) -> dict[str, tuple[int, ...]]:
    """Cheap validation from the header only: readable, every tensor present with its shape and dtype.

    ``expected`` maps tensor name to ``(shape, dtype)``; ``None`` skips that check. A
    truncated file fails here too: safetensors checks the header against the file size.
    Returns the shapes of the expected tensors; raises :class:`CorruptCacheEntry`.
    """
    shapes = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = set(handle.keys())
            for name, (shape, dtype) in expected.items():
                if name not in names:
                    raise CorruptCacheEntry(path, f"tensor {name!r} is missing (has {sorted(names)})")
                tensor_slice = handle.get_slice(name)
                shapes[name] = tuple(tensor_slice.get_shape())
                if shape is not None and shapes[name] != tuple(shape):
                    raise CorruptCacheEntry(path, f"tensor {name!r} has shape {list(shapes[name])}, expected {list(shape)}")
                if dtype is not None and tensor_slice.get_dtype() != _SAFETENSORS_DTYPES[dtype]:
                    raise CorruptCacheEntry(path, f"tensor {name!r} is {tensor_slice.get_dtype()}, expected {_SAFETENSORS_DTYPES[dtype]}")
        return shapes
    except CorruptCacheEntry:
        raise
    except Exception as error:  # safetensors raises its own error types for bad headers and short files
        raise CorruptCacheEntry(path, f"unreadable ({type(error).__name__}: {error})") from error


def read_entry(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an entry; any read failure becomes :class:`CorruptCacheEntry`."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as error:
        raise CorruptCacheEntry(path, f"unreadable ({type(error).__name__}: {error})") from error


def discard_corrupt(error: CorruptCacheEntry) -> None:
    """Report a bad entry by file name and delete it, so it is encoded again."""
    log.warning("cache file %s is corrupt (%s); deleting it and encoding it again", error.path, error.reason)
    error.path.unlink(missing_ok=True)


def sweep_temporaries(folder: str | Path) -> int:
    """Delete temporaries of writers that no longer run (killed mid-write); returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.rglob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match and not _process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d partial cache file(s) left by an interrupted run under %s", removed, folder)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


_SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
}
