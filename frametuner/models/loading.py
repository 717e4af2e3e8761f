"""Load a diffusers-layout model one block at a time, transforming each block as it lands.

``from_pretrained`` materialises the whole state dict in the requested dtype before
anything else can happen, so a quantised 13.6B DiT would first need 27 GB of host RAM in
bf16. Here the model skeleton is built without weights (accelerate's
``init_empty_weights``), the layers outside ``blocks`` are read first, then each block's
tensors are read from the safetensors shards (memory-mapped, closed after each block),
cast, assigned, handed to ``prepare_block`` (e.g. quantisation) and moved on. Peak host
memory is the prepared model plus one block in the load dtype.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


def weight_map(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, for a single file or an indexed set of shards."""
    index = folder / INDEX_NAME
    if index.exists():
        entries = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in entries.items()}
    single = folder / WEIGHTS_NAME
    if not single.exists():
        raise FileNotFoundError(f"{folder} has neither {WEIGHTS_NAME} nor {INDEX_NAME}")
    from safetensors import safe_open

    with safe_open(single, framework="pt") as handle:
        return {name: single for name in handle.keys()}


def release_freed_host_memory() -> None:
    """Hand memory freed by the last block back to the OS (glibc only).

    glibc keeps freed heap chunks for reuse, and a block's temporaries (the bf16 copy,
    quantisation intermediates) interleave with the long-lived quantised tensors, so
    without trimming the resident size grows by the temporaries of every block.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl and other libcs: nothing to trim
        pass


def _read(names: list[str], files: dict[str, Path], dtype: torch.dtype, keep_fp32: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Tensors ``names`` cast to ``dtype``, except those under a module named in ``keep_fp32``
    (diffusers' ``_keep_in_fp32_modules``: read in float32, as ``from_pretrained`` does)."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = defaultdict(list)
    for name in names:
        by_file[files[name]].append(name)
    tensors = {}
    for file, keys in by_file.items():
        with safe_open(file, framework="pt") as handle:
            for key in keys:
                tensor = handle.get_tensor(key)
                # Always a copy: a tensor viewing the memory map would keep the whole shard
                # mapped (and resident) for as long as the model lives.
                target = torch.float32 if any(part in keep_fp32 for part in key.split(".")) else dtype
                tensors[key] = tensor.to(target if tensor.is_floating_point() else tensor.dtype, copy=True)
    return tensors


def _assign(module: nn.Module, prefix: str, files: dict[str, Path], dtype: torch.dtype, source: Path, keep_fp32: tuple[str, ...] = ()) -> None:
    expected = list(module.state_dict().keys())
    names = [prefix + key for key in expected]
    missing = [name for name in names if name not in files]
    if missing:
        raise KeyError(f"{source}: the checkpoint lacks {missing[0]} (and {len(missing) - 1} more); is it the right model?")
    tensors = _read(names, files, dtype, keep_fp32)
    module.load_state_dict({key: tensors[prefix + key] for key in expected}, strict=True, assign=True)


def load_blockwise(
    model_class,
    folder: str | Path,
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    prepare_block: Callable[[nn.Module], None] | None = None,
    blocks_attr: str = "blocks",
) -> nn.Module:
    """Build ``model_class`` from ``folder`` (config.json + safetensors) block by block.

    Layers outside ``blocks_attr`` go to ``device``; each block is read, cast to
    ``dtype``, then given to ``prepare_block`` (which places it) or moved to ``device``.
    """
    from accelerate import init_empty_weights

    folder = Path(folder)
    config = model_class.load_config(folder)
    with init_empty_weights():
        model = model_class.from_config(config)
    files = weight_map(folder)
    keep_fp32 = tuple(getattr(model_class, "_keep_in_fp32_modules", None) or ())
    blocks = getattr(model, blocks_attr)
    known = set(model.state_dict().keys())
    unexpected = sorted(set(files) - known)
    if unexpected:
        raise KeyError(f"{folder}: the checkpoint has {unexpected[0]} (and {len(unexpected) - 1} more) that {model_class.__name__} does not")

    for name, child in model.named_children():
        if child is not blocks:
            _assign(child, f"{name}.", files, dtype, folder, keep_fp32)
            child.to(device)
    # Parameters of the model itself (Wan's output scale_shift_table), not of a child module.
    own = [name for name, _ in model.named_parameters(recurse=False)]
    if own:
        tensors = _read(own, files, dtype, keep_fp32)
        for name in own:
            requires_grad = getattr(model, name).requires_grad
            setattr(model, name, nn.Parameter(tensors[name].to(device), requires_grad=requires_grad))
    for index, block in enumerate(blocks):
        _assign(block, f"{blocks_attr}.{index}.", files, dtype, folder, keep_fp32)
        if prepare_block is not None:
            prepare_block(block)
            release_freed_host_memory()
        else:
            block.to(device)
    empty = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if empty:
        raise KeyError(f"{folder}: {empty[0]} was not loaded (it is not inside a child module)")
    return model.eval()
