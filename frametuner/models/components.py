"""Helpers shared by every family's encoders: find a component folder, name what it computes, free memory.

An encoder's *identity* is the part of a cache key that says which function produced a
cached tensor. It is computed from the files on disk (config and tokenizer contents, the
names and sizes of weight files), the dtype and the settings, without loading weights, so
a cache run that finds everything present never loads an encoder at all.
"""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def resolve_component(root: str | Path, subfolder: str) -> Path:
    """``<root>/<subfolder>`` as a local folder; a hub id is fetched into the hub cache (that subfolder only)."""
    local = Path(root).expanduser() / subfolder
    if local.is_dir():
        return local
    if Path(root).expanduser().exists() or str(root).count("/") != 1:
        raise FileNotFoundError(
            f"{local} does not exist: the checkpoint folder must hold {subfolder}/ (upstream layout: "
            "dit/ text_encoder/ tokenizer/ vae/ scheduler/); check pretrained_model_name_or_path"
        )
    from huggingface_hub import snapshot_download

    snapshot = snapshot_download(repo_id=str(root), allow_patterns=[f"{subfolder}/*"])
    return Path(snapshot) / subfolder


def _folder_fingerprint(folder: Path) -> list[Any]:
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)):
        name = path.relative_to(folder).as_posix()
        if path.suffix in WEIGHT_SUFFIXES:
            entries.append([name, path.stat().st_size])  # weights: size only (hashing 11 GB per run is too slow)
        else:
            entries.append([name, hashlib.sha256(path.read_bytes()).hexdigest()])
    return entries


def component_identity(kind: str, folders: Iterable[str | Path], *, dtype: torch.dtype, settings: dict[str, Any] | None = None) -> str:
    """``"<kind>-<16 hex>-<dtype>"``: changes whenever a config, tokenizer, weight size, dtype or setting does."""
    description = {
        "kind": kind,
        "folders": [_folder_fingerprint(Path(folder)) for folder in folders],
        "dtype": str(dtype).removeprefix("torch."),
        "settings": settings or {},
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    return f"{kind}-{digest}-{description['dtype']}"


def free_accelerator_memory() -> None:
    """Return freed blocks to the driver so the next model (the DiT) can use them."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()
