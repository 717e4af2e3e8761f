"""Resumable checkpoints, written atomically.

A checkpoint is a folder ``checkpoint-<step>`` holding the trainable weights
(safetensors), optimizer and LR-scheduler state, every RNG the run draws from, the
data sampler position and the global step. It is assembled in a hidden temporary
folder and renamed into place, so a kill during a save leaves the previous
checkpoints intact and never a half-written one under a real name.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


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
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: str | Path,
    step: int,
    *,
    weights: dict[str, torch.Tensor],
    optimizer: Any,
    scheduler: Any,
    rng: dict[str, Any],
    trainer_state: dict[str, Any],
    extra_writer=None,
    keep: int | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically; ``extra_writer(tmp_folder)`` adds files (LoRA exports).

    Older checkpoints beyond ``keep`` are removed only after the new one is in place.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"checkpoint-{step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step:06d}-", dir=folder))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, staging / "trainable.safetensors")
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        torch.save(rng, staging / "rng.pt")
        if extra_writer is not None:
            extra_writer(staging)
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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Everything :func:`save_checkpoint` wrote, on the CPU."""
    path = Path(path)
    return {
        "weights": load_file(path / "trainable.safetensors"),
        "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False),
        "scheduler": torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False),
        "rng": torch.load(path / "rng.pt", map_location="cpu", weights_only=False),
        "state": json.loads((path / STATE_FILE).read_text()),
    }


def cleanup_stale_staging(folder: str | Path) -> None:
    """Remove temporary folders a killed save left behind."""
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.glob(".checkpoint-*"):
            shutil.rmtree(path, ignore_errors=True)
