"""Resumable checkpoints, written atomically, by one process or by every rank of a run.

A checkpoint is a folder ``checkpoint-<step>`` holding the trainable weights and the
optimizer state (``trainable.safetensors`` + ``optimizer.pt``, or for a sharded FSDP run
``sharded/``, written by every rank with torch.distributed.checkpoint), the LR-scheduler
state, each rank's RNG states (``rng_rank<r>.pt``), and in ``trainer_state.json`` the
global step, the data sampler position and the number of ranks. It is assembled in a
hidden staging folder and renamed into place (:func:`begin_checkpoint`, the ranks'
writers, :func:`commit_checkpoint`), so a kill during a save leaves the previous
checkpoints intact and never a half-written one under a real name.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SHARDED_DIR = "sharded"  # FSDP: torch.distributed.checkpoint shards of weights + optimizer


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are never listed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def resolve_resume(folder: str | Path, value: str | None) -> Path | None:
    if not value:
        return None
    if value == "latest":
        checkpoints = list_checkpoints(folder)
        return checkpoints[-1] if checkpoints else None
    path = Path(value)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"resume_from_checkpoint={value!r}: {path / STATE_FILE} not found; pass 'latest' or a checkpoint folder")
    return path


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's GPU (one per rank)
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def checkpoint_folder(folder: str | Path, step: int) -> Path:
    """``<folder>/checkpoint-<step>``, zero-padded so names sort by step."""
    return Path(folder) / f"checkpoint-{step:06d}"


def staging_folder(folder: str | Path, step: int) -> Path:
    """Where ``checkpoint-<step>`` is assembled: one name every rank can compute."""
    return Path(folder) / f".{checkpoint_folder(folder, step).name}.partial"


def begin_checkpoint(folder: str | Path, step: int) -> Path:
    """Create an empty staging folder for ``step`` (main process; the ranks write into it after a barrier)."""
    staging = staging_folder(folder, step)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def write_plain_state(staging: Path, *, weights: dict[str, torch.Tensor], optimizer: Any) -> None:
    """Trainable weights and optimizer state of a model every rank holds whole (one process, DDP)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, staging / WEIGHTS_FILE)
    torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)


def write_sharded_state(staging: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Trainable weights and optimizer state of a sharded (FSDP2) model: every rank writes its
    own shards with torch.distributed.checkpoint (collective; frozen base weights are left out)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=_sharded_options())
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=staging / SHARDED_DIR)


def load_sharded_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load :func:`write_sharded_state`'s files into ``model``/``optimizer`` in place, resharding
    to however many ranks (or a single unsharded process) load it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=_sharded_options())
    state = {"model": model_state, "optimizer": optimizer_state}
    with warnings.catch_warnings():  # one unsharded process reading every shard is intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=Path(path) / SHARDED_DIR)  # raises if a trainable weight is missing
    # Not strict: the frozen base weights are not in the checkpoint (they come from the model).
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=_sharded_options(strict=False))


def _sharded_options(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def write_rank_state(staging: Path, rank: int, rng: dict[str, Any]) -> None:
    """What differs between ranks: their RNG states (one file per rank)."""
    torch.save(rng, staging / rng_file(rank))


def commit_checkpoint(staging: Path, step: int, *, scheduler: Any, trainer_state: dict[str, Any], keep: int | None = None) -> Path:
    """Finish the staging folder and rename it into ``checkpoint-<step>`` (main process, after
    every rank wrote its part). Older checkpoints beyond ``keep`` go only after the new one is in place."""
    folder = staging.parent
    final = checkpoint_folder(folder, step)
    try:
        torch.save(scheduler.state_dict(), staging / SCHEDULER_FILE)
        # The state file is written last: its presence marks a complete checkpoint.
        (staging / STATE_FILE).write_text(json.dumps({"step": step, **trainer_state}, indent=2))
        _fsync_tree(staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if keep is not None:
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def load_checkpoint(path: str | Path, rank: int = 0) -> dict[str, Any]:
    """What a checkpoint holds, on the CPU, for ``rank``.

    ``weights``/``optimizer`` are there for a plain checkpoint; ``sharded`` is True for an
    FSDP one (load it with :func:`load_sharded_state`). ``rng`` is ``rank``'s, or rank 0's
    when the run had fewer ranks (``rng_rank`` says whose).
    """
    path = Path(path)
    saved = path / rng_file(rank)
    rng_rank = rank if saved.exists() else 0
    state: dict[str, Any] = {
        "state": json.loads((path / STATE_FILE).read_text()),
        "scheduler": torch.load(path / SCHEDULER_FILE, map_location="cpu", weights_only=False),
        "rng": torch.load(path / rng_file(rng_rank), map_location="cpu", weights_only=False),
        "rng_rank": rng_rank,
        "sharded": (path / SHARDED_DIR).is_dir(),
    }
    if (path / WEIGHTS_FILE).exists():
        state["weights"] = load_file(path / WEIGHTS_FILE)
        state["optimizer"] = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=False)
    return state


def cleanup_stale_staging(folder: str | Path) -> None:
    """Remove temporary folders a killed save left behind."""
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.glob(".checkpoint-*"):
            shutil.rmtree(path, ignore_errors=True)
