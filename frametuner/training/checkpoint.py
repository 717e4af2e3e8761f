"""Resumable checkpoints, written atomically, by one process or by every rank of a run.

A checkpoint is a folder ``checkpoint-<step>`` holding the trainable weights and the
optimizer state (``trainable.safetensors`` + ``optimizer.pt``, or for a sharded FSDP run
``sharded/``, written by every rank with torch.distributed.checkpoint), the LR-scheduler
state, each rank's RNG states (``rng_rank<r>.pt``), and in ``trainer_state.json`` the
global step, the data sampler position and the number of ranks.

Nothing is lost to a kill or a full disk:

- A checkpoint is assembled in a hidden staging folder ``.checkpoint-<step>.partial``
  (:func:`begin_checkpoint`, the ranks' writers, :func:`commit_checkpoint`). Its
  completion marker (``checkpoint_complete.json``: every file and its size) is written
  last, after every other file is on disk; a folder counts as a checkpoint only with a
  marker whose files are all there (:func:`is_complete`).
- It then replaces an existing checkpoint of the same step (a finished run resumed and
  saved again) by renames only: the old folder becomes ``.checkpoint-<step>.old``, the
  new one takes its name, and only then is the old one deleted. A folder is deleted by
  renaming it to ``.checkpoint-<step>.deleting`` first, so no half-deleted folder ever
  keeps a real name (the same for ``checkpoints_total_limit`` pruning).
- At the next start :func:`recover_checkpoints` finishes what a kill interrupted: a
  complete ``.partial`` or ``.old`` left without its checkpoint is put back in place,
  everything else hidden is deleted. ``latest`` skips an incomplete checkpoint with a
  warning naming it.
- An ``OSError`` while saving (a full disk) removes the staging folder and becomes one
  :class:`~frametuner.storage.StorageError` line; the previous checkpoints are untouched.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..storage import folder_bytes, storage_error

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
HIDDEN_PATTERN = re.compile(r"^\.(checkpoint-\d+)\.(partial|old|deleting)$")  # staging, replaced, being deleted
COMPLETE_FILE = "checkpoint_complete.json"  # written last: the checkpoint's files and sizes
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SHARDED_DIR = "sharded"  # FSDP: torch.distributed.checkpoint shards of weights + optimizer


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def is_complete(path: str | Path) -> bool:
    """True when ``path`` holds a completion marker and every file it lists, at its size."""
    return incomplete_reason(path) is None


def incomplete_reason(path: str | Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (None when it is one)."""
    path = Path(path)
    try:
        manifest = json.loads((path / COMPLETE_FILE).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return _legacy_reason(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable {COMPLETE_FILE} ({error})"
    for name, size in files.items():
        try:
            found = (path / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if found != size:
            return f"{name} has {found} bytes, {size} were written"
    return None


def _legacy_reason(path: Path) -> str | None:
    """A checkpoint saved before completion markers existed (frametuner <= 0.1, no marker):
    it counts when every file such a save wrote is there and its weights open, so runs
    started before the upgrade still resume. Those saves renamed a finished folder into
    place, so the one way to lose files was the old delete-before-replace, which leaves the
    weights or the state missing: that is what is checked."""
    if not CHECKPOINT_PATTERN.match(path.name):  # a staging or replaced copy is this version's: it needs its marker
        return f"no {COMPLETE_FILE} (an interrupted save)"
    missing = [name for name in (STATE_FILE, SCHEDULER_FILE, rng_file(0)) if not (path / name).is_file()]
    if (path / SHARDED_DIR).is_dir():
        pass
    elif (path / WEIGHTS_FILE).is_file() and (path / OPTIMIZER_FILE).is_file():
        try:
            from safetensors import safe_open

            with safe_open(path / WEIGHTS_FILE, framework="pt"):
                pass
        except Exception as error:  # noqa: BLE001 - any unreadable weights make it incomplete
            return f"{WEIGHTS_FILE} is unreadable ({error})"
    else:
        missing.append(WEIGHTS_FILE if not (path / WEIGHTS_FILE).is_file() else OPTIMIZER_FILE)
    if missing:
        return f"no {COMPLETE_FILE} and {', '.join(missing)} missing (an interrupted save, or not a frametuner checkpoint)"
    return None


def _step_folders(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir())


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete and temporary folders are never listed)."""
    return [p for _, p in _step_folders(Path(folder)) if is_complete(p)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint; a newer incomplete one is skipped with a warning naming it."""
    for _, path in reversed(_step_folders(Path(folder))):
        reason = incomplete_reason(path)
        if reason is None:
            return path
        log.warning("skipping incomplete checkpoint %s: %s", path, reason)
    return None


def resolve_resume(folder: str | Path, value: str | None) -> Path | None:
    if not value:
        return None
    if value == "latest":
        return latest_checkpoint(folder)
    path = Path(value)
    reason = incomplete_reason(path)
    if reason is not None:
        raise FileNotFoundError(f"resume_from_checkpoint={value!r} is not a complete checkpoint: {reason}; pass 'latest' or a checkpoint folder")
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
        if is_complete(staging):  # a finished save a kill kept from its rename: it is the newest copy
            _install(staging, checkpoint_folder(folder, step))
        else:
            _discard(staging)
    with saving(staging):
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
    """Finish the staging folder and put it in place as ``checkpoint-<step>`` (main process,
    after every rank wrote its part). An existing checkpoint of that step is replaced only
    once the new one is complete; older checkpoints beyond ``keep`` go only after that."""
    folder = staging.parent
    final = checkpoint_folder(folder, step)
    with saving(staging):
        torch.save(scheduler.state_dict(), staging / SCHEDULER_FILE)
        (staging / STATE_FILE).write_text(json.dumps({"step": step, **trainer_state}, indent=2))
        _fsync_tree(staging)
        _write_marker(staging, step)
        _install(staging, final)
    if keep is not None:
        prune_checkpoints(folder, keep, protect=final)
    return final


@contextmanager
def saving(staging: Path) -> Iterator[None]:
    """Around the writes of a save: an ``OSError`` (a full disk, a lost mount) removes the
    staging folder and is raised again as one :class:`StorageError` line; the previous
    checkpoints are untouched."""
    try:
        yield
    except OSError as error:
        written = folder_bytes(staging)
        shutil.rmtree(staging, ignore_errors=True)
        previous = latest_checkpoint(staging.parent)
        needed = max(written, folder_bytes(previous) if previous is not None else 0)
        kept = f"the previous checkpoint {previous.name} is intact" if previous is not None else "no earlier checkpoint exists"
        raise storage_error(
            error, staging.parent, needed=needed, what=f"saving {staging.name[1:-len('.partial')]}",
            fix=f"the partial save was removed and {kept}; free space (or set output_dir on a larger disk), then run again with --resume_from_checkpoint latest",
        ) from None


def _write_marker(staging: Path, step: int) -> None:
    """The completion marker: the checkpoint's files and sizes, written (and synced) last."""
    files = {p.relative_to(staging).as_posix(): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file() and p.name != COMPLETE_FILE}
    marker = staging / COMPLETE_FILE
    with open(marker, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, "files": files}, indent=1))
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(staging)


def _hidden(path: Path, kind: str) -> Path:
    """``.checkpoint-<step>.<kind>`` beside ``path`` (a real or a hidden checkpoint folder)."""
    match = HIDDEN_PATTERN.match(path.name)
    name = match.group(1) if match else path.name
    return path.parent / f".{name}.{kind}"


def _install(source: Path, final: Path) -> None:
    """Put the complete folder ``source`` in place as ``final``; an existing ``final`` is
    moved aside first and deleted only once ``source`` holds the name."""
    old = _hidden(final, "old")
    if final.exists():
        if old.exists():
            _discard(old)
        os.replace(final, old)
    os.replace(source, final)
    _fsync_dir(final.parent)
    if old.exists():
        _discard(old)


def _discard(path: Path) -> None:
    """Delete a folder: renamed to a ``.deleting`` name first, so a kill mid-delete never
    leaves a half-deleted folder under a name that counts."""
    doomed = _hidden(path, "deleting")
    if path != doomed:
        if doomed.exists():
            shutil.rmtree(doomed)
        os.replace(path, doomed)
        _fsync_dir(path.parent)
    shutil.rmtree(doomed)


def prune_checkpoints(folder: str | Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``keep`` (never ``protect``, the one
    just saved); returns what was deleted."""
    complete = [p for p in list_checkpoints(folder) if p != protect]
    doomed = complete[: max(0, len(complete) - (keep - (protect is not None)))]
    for path in doomed:
        _discard(path)
    return doomed


def recover_checkpoints(folder: str | Path) -> list[str]:
    """Finish what a killed save left behind (main process, before resuming); returns what was done.

    A complete ``.partial`` is the newest copy of its step: it is put in place. A complete
    ``.old`` whose checkpoint is missing or incomplete is put back. Everything else
    hidden (incomplete copies, half-deleted folders) is deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    hidden = sorted((m.group(2), p) for p in folder.iterdir() if (m := HIDDEN_PATTERN.match(p.name)))
    order = {"deleting": 0, "partial": 1, "old": 2}
    for kind, path in sorted(hidden, key=lambda item: order[item[0]]):
        if not path.exists():
            continue
        final = folder / HIDDEN_PATTERN.match(path.name).group(1)
        if kind == "deleting" or not is_complete(path) or (kind == "old" and is_complete(final)):
            _discard(path)
            continue
        if final.exists() and not is_complete(final):
            _discard(final)
        if kind == "old":
            os.replace(path, final)
            _fsync_dir(folder)
        else:
            _install(path, final)
        message = f"recovered {final.name} from a save a kill interrupted ({path.name})"
        log.warning(message)
        done.append(message)
    return done


def cleanup_stale_staging(folder: str | Path) -> None:
    """Old name of :func:`recover_checkpoints` (which keeps a complete copy instead of deleting it)."""
    recover_checkpoints(folder)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make renames inside ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def load_checkpoint(path: str | Path, rank: int = 0) -> dict[str, Any]:
    """What a checkpoint holds, on the CPU, for ``rank``.

    ``weights``/``optimizer`` are there for a plain checkpoint; ``sharded`` is True for an
    FSDP one (load it with :func:`load_sharded_state`). ``rng`` is ``rank``'s, or rank 0's
    when the run had fewer ranks (``rng_rank`` says whose).
    """
    path = Path(path)
    reason = incomplete_reason(path)
    if reason is not None:
        raise FileNotFoundError(f"{path} is not a complete checkpoint: {reason}")
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
