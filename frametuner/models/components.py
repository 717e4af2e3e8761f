"""Helpers shared by every family's encoders: find a component folder, name what it computes, free memory.

An encoder's *identity* is the part of a cache key that says which function produced a
cached tensor. It is computed from the files on disk (config and tokenizer contents, the
SHA-256 of weight files), the dtype and the settings, without loading weights, so a cache
run that finds everything present never loads an encoder at all. Two checkpoints that ship
identical encoder files (LongCat-Video and Wan 2.1 both ship umT5-XXL and the Wan VAE)
therefore share cache entries, and other weights of the same size never reuse them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import string
import tempfile
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


def _digest_memo_file() -> Path:
    base = os.environ.get("FRAMETUNER_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "frametuner")
    return Path(base) / "weight-digests.json"


def _read_memo(path: Path) -> dict[str, str]:
    try:
        memo = json.loads(path.read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def weights_digest(path: str | Path) -> str:
    """SHA-256 of a weight file, computed once per file version on this machine.

    A file in the Hugging Face hub cache is a link to a blob named by its SHA-256 (git LFS),
    so it costs nothing; any other file is hashed once (an 11 GB umT5 takes seconds) and
    remembered by (path, size, mtime) in ``$FRAMETUNER_HOME/weight-digests.json``.
    """
    resolved = Path(path).resolve()
    name = resolved.name
    if resolved.parent.name == "blobs" and len(name) == 64 and all(c in string.hexdigits for c in name):
        return name.lower()
    stat = resolved.stat()
    key = f"{resolved}:{stat.st_size}:{stat.st_mtime_ns}"
    memo_file = _digest_memo_file()
    known = _read_memo(memo_file).get(key)
    if known:
        return known
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    try:  # best effort: a lost entry only means hashing again next time
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        memo = {**_read_memo(memo_file), key: value}
        fd, tmp = tempfile.mkstemp(prefix=".weight-digests-", dir=memo_file.parent)
        with os.fdopen(fd, "w") as out:
            json.dump(memo, out)
        os.replace(tmp, memo_file)
    except OSError:
        pass
    return value


def _folder_fingerprint(folder: Path) -> list[Any]:
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)):
        name = path.relative_to(folder).as_posix()
        if path.suffix in WEIGHT_SUFFIXES:
            entries.append([name, weights_digest(path)])
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
