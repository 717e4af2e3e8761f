"""Fault injection for file operations: the process "dies" (or the disk fills) at the Nth one.

:class:`FileOps` patches the operations a save is made of (``mkdir``, file writes through
``open``/``torch.save``/safetensors, ``rename``/``replace``, ``unlink``/``rmdir`` and a
file-by-file ``shutil.rmtree``) and counts those on paths under ``root``. With
``die_at=N`` the Nth operation and every one after it raise :class:`Killed`, a
``BaseException`` no ``except Exception`` catches, before touching the disk: what is left
on disk is exactly what a ``kill -9`` between operation N-1 and N leaves (cleanup handlers
cannot write anything either, as in a dead process). With ``fail_at=N`` and ``error`` only
the Nth *write* raises that ``OSError`` (a full disk), and the process lives on.
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import safetensors.torch
import torch

WRITES = {"mkdir", "open", "torch.save", "safetensors"}


class Killed(BaseException):
    """The process died here."""


class FileOps:
    def __init__(self, root: Path, *, die_at: int | None = None, fail_at: int | None = None, error: OSError | None = None):
        self.root = Path(root).resolve()
        self.die_at, self.fail_at, self.error = die_at, fail_at, error
        self.count = 0
        self.writes = 0
        self.dead = False
        self.log: list[tuple[str, str]] = []  # (operation, path) of every operation counted

    def _under_root(self, path) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(self.root)
        except (TypeError, ValueError):
            return False

    def tick(self, op: str, path) -> None:
        if not self._under_root(path):
            return
        self.count += 1
        self.log.append((op, str(Path(os.fsdecode(path)).resolve().relative_to(self.root))))
        if self.dead or (self.die_at is not None and self.count >= self.die_at):
            self.dead = True
            raise Killed(f"killed before {op} {path} (operation {self.count})")
        if op in WRITES:
            self.writes += 1
            if self.fail_at is not None and self.writes == self.fail_at:
                raise self.error

    def __enter__(self) -> "FileOps":
        real = {name: getattr(os, name) for name in ("mkdir", "rename", "replace", "unlink", "remove", "rmdir")}
        real_open, real_save, real_serialize = builtins.open, torch.save, safetensors.torch.serialize_file

        def wrap(name):
            def operation(path, *args, **kwargs):
                if not (name == "mkdir" and os.path.isdir(path)):  # mkdir(exist_ok=True) of a folder that exists: no write
                    self.tick(name, path)
                return real[name](path, *args, **kwargs)
            return operation

        def opener(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                self.tick("open", file)
            return real_open(file, mode, *args, **kwargs)

        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)):
                self.tick("torch.save", f)
            return real_save(obj, f, *args, **kwargs)

        def serialize(tensors, filename, *args, **kwargs):
            self.tick("safetensors", filename)
            return real_serialize(tensors, filename, *args, **kwargs)

        def rmtree(path, ignore_errors=False, onerror=None, **kwargs):
            """File by file, deepest first, through the patched unlink/rmdir (a kill lands mid-way)."""
            try:
                for folder, subfolders, files in os.walk(path, topdown=False):
                    for name in files:
                        os.unlink(os.path.join(folder, name))
                    for name in subfolders:
                        os.rmdir(os.path.join(folder, name))
                os.rmdir(path)
            except OSError:
                if not ignore_errors:
                    raise

        self._stack = ExitStack()
        for name in real:
            self._stack.enter_context(mock.patch.object(os, name, wrap(name)))
        self._stack.enter_context(mock.patch.object(builtins, "open", opener))
        self._stack.enter_context(mock.patch.object(io, "open", opener))
        self._stack.enter_context(mock.patch.object(torch, "save", save))
        self._stack.enter_context(mock.patch.object(safetensors.torch, "serialize_file", serialize))
        self._stack.enter_context(mock.patch.object(shutil, "rmtree", rmtree))
        return self

    def __exit__(self, *exc) -> bool:
        self._stack.close()
        return False
