"""The three LoRA file formats, read into and written from :class:`LoraWeights`.

``peft``: a folder with ``adapter_model.safetensors`` + ``adapter_config.json``, as
``PeftModel.save_pretrained`` writes it, so ``PeftModel.from_pretrained(dit, folder)``
loads it. Keys ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` (module =
frametuner's = upstream's module path); per-layer rank/alpha via ``rank_pattern`` /
``alpha_pattern`` when they differ. The config is also stored in the safetensors header
(``adapter_config``) so the file alone still converts.

``upstream``: the family's own format (its ``LoraLayout.upstream``: what the family's reference
``load_lora`` reads): ``<key_prefix><module path with '.' -> key_dot>`` + ``.lora_down.weight [n*r, in]``,
``.lora_up.weight [out, r]`` or ``.lora_up.blocks.<i>.weight [out/n, r]`` for fused
layers, and ``.alpha_scale`` (0-dim float32). The loader takes ONE rank
(``lora_network_dim``) for the whole file, so every layer is written at the same rank:
the largest any layer needs, the others zero-padded (exact). The metadata records it.

``comfyui``: ComfyUI's names for the family's layers (``LoraLayout.comfyui_names``; each
family's ``lora_layout.py`` says what they were read from):
``diffusion_model.<wrapper module>.lora_A.weight`` / ``.lora_B.weight`` / ``.alpha``
(= scale * rank), fused layers split into the wrapper's separate Linears.

Conversions between them are pure key/shape transforms (:mod:`frametuner.lora.delta`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..models.spec import LoraLayout, UpstreamLoraFormat
from .delta import LoraWeights, LowRankDelta, SourceTensor
from .errors import LoraError, LoraFormatError
from .layout import DEFAULT_FAMILY, family_formats, fused_outputs, is_root_layer, join_block, layout_for_family, split_block

log = logging.getLogger("frametuner.lora")

FORMATS = ("peft", "upstream", "comfyui")
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_KEY_PREFIX = "base_model.model."
# Prefixes other PEFT-style writers put before the module path (PeftModel, diffusers pipelines).
_PEFT_READ_PREFIXES = (PEFT_KEY_PREFIX, "transformer.")
# Metadata that describes the LoRA rather than one file format; carried through conversions.
CARRIED_METADATA = ("base_model", "software")


# ---------------------------------------------------------------------------- entry points
def detect_format(path: str | Path, *, family: str = DEFAULT_FAMILY) -> str:
    """``"peft"``, ``"upstream"`` or ``"comfyui"``, from the file's keys (a folder is PEFT)."""
    path = Path(path)
    if path.is_dir():
        if (path / PEFT_WEIGHTS_NAME).exists():
            return "peft"
        raise LoraFormatError(f"{path}: a folder LoRA must hold {PEFT_WEIGHTS_NAME} (PEFT format)")
    if not path.exists():
        raise LoraError(f"{path}: no such LoRA file")
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    return _format_of_keys(keys, path, layout_for_family(family))


def read_lora(path: str | Path, *, family: str = DEFAULT_FAMILY) -> LoraWeights:
    """Any of the three formats (detected from the keys) as :class:`LoraWeights`."""
    path = Path(path)
    layout = layout_for_family(family)
    fmt = detect_format(path, family=family)
    weights_file, config_file = _peft_files(path) if fmt == "peft" else (path, None)
    tensors, metadata = _load(weights_file)
    if fmt == "upstream":
        deltas = _read_upstream(tensors, _upstream_of(layout, family))
    elif fmt == "comfyui":
        deltas = _read_comfyui(tensors, layout)
    else:
        deltas = _read_peft(tensors, _peft_config(config_file, metadata, weights_file), weights_file)
    carried = {key: metadata[key] for key in CARRIED_METADATA if key in metadata}
    return LoraWeights(deltas, carried, fmt)


def write_lora(weights: LoraWeights, path: str | Path, to: str, *, family: str = DEFAULT_FAMILY) -> Path:
    """Write ``weights`` as format ``to``; returns the file (the folder for ``peft``)."""
    if to not in FORMATS:
        raise LoraError(f"unknown LoRA format {to!r}; use one of {', '.join(FORMATS)}")
    if to not in family_formats(family):
        raise LoraError(f"{family} LoRAs have no {to!r} format; use one of {', '.join(family_formats(family))}")
    if not weights.deltas:
        raise LoraError(f"{path}: refusing to write an empty LoRA (no layers)")
    path = Path(path)
    layout = layout_for_family(family)
    metadata = {key: weights.metadata[key] for key in CARRIED_METADATA if key in weights.metadata}
    if to == "upstream":
        tensors, rank = upstream_tensors(weights, layout)
        metadata.update(_describe(weights, layout, rank, format_name=_upstream_of(layout, family).name))
        metadata.update(lora_network_dim=str(rank), lora_network_alpha=metadata["alpha"])
        _save_atomic(tensors, path, metadata)
        return path
    if to == "comfyui":
        metadata.update(_describe(weights, layout, None, format_name=layout.comfyui_format))
        _save_atomic(comfyui_tensors(weights, layout), path, metadata)
        return path
    # PEFT: a folder, or a named .safetensors with adapter_config.json beside it.
    weights_file = path if path.suffix == ".safetensors" else path / PEFT_WEIGHTS_NAME
    config_json = json.dumps(_config_dict(peft_config_for(weights)), indent=2, sort_keys=True)
    metadata.update(_describe(weights, layout, None, format_name="peft"), adapter_config=config_json)
    _save_atomic({PEFT_KEY_PREFIX + key: t for key, t in peft_tensors(weights).items()}, weights_file, metadata)
    _write_text_atomic(weights_file.parent / PEFT_CONFIG_NAME, config_json + "\n")
    return path


def convert(src_path: str | Path, dst_path: str | Path, to: str = "upstream", *, family: str = DEFAULT_FAMILY) -> Path:
    """Convert a LoRA between ``peft``, ``upstream`` and ``comfyui`` without a model (exact)."""
    return write_lora(read_lora(src_path, family=family), dst_path, to, family=family)


# ---------------------------------------------------------------------------- upstream
def _upstream_of(layout: LoraLayout, family: str) -> UpstreamLoraFormat:
    if layout.upstream is None:
        raise LoraError(f"{family} LoRAs have no upstream format; use one of {', '.join(family_formats(family))}")
    return layout.upstream


def upstream_key(module: str, upstream: UpstreamLoraFormat) -> str:
    return upstream.key_prefix + module.replace(".", upstream.key_dot)


def _read_upstream(tensors: dict[str, torch.Tensor], upstream: UpstreamLoraFormat) -> dict[str, LowRankDelta]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        prefix, dot, leaf = key.partition(".")
        if not prefix.startswith(upstream.key_prefix) or not dot:
            raise LoraFormatError(f"unmapped key {key!r}: upstream LoRA keys are '{upstream.key_prefix}<module>.<leaf>'")
        groups.setdefault(prefix, {})[leaf] = tensor

    deltas = {}
    for prefix, leaves in groups.items():
        module = prefix[len(upstream.key_prefix) :].replace(upstream.key_dot, ".")
        down, plain_up, alpha_scale = (leaves.pop(k, None) for k in ("lora_down.weight", "lora_up.weight", "alpha_scale"))
        blocks = {}
        for leaf in list(leaves):
            match = re.fullmatch(r"lora_up\.blocks\.(\d+)\.weight", leaf)
            if match:
                blocks[int(match.group(1))] = leaves.pop(leaf)
        if leaves:
            raise LoraFormatError(f"unmapped key {prefix}.{next(iter(leaves))!s}: not a leaf of upstream's LoRA modules")
        if down is None or alpha_scale is None or (plain_up is None) == (not blocks) or sorted(blocks) != list(range(len(blocks))):
            raise LoraFormatError(
                f"{prefix}: incomplete upstream LoRA module; it needs .lora_down.weight, .alpha_scale and either "
                ".lora_up.weight or .lora_up.blocks.0..n-1.weight"
            )
        scale = float(alpha_scale)
        if plain_up is not None:
            delta = LowRankDelta(down, plain_up, scale)
            ups = [(f"{prefix}.lora_up.weight", plain_up)]
        else:
            parts = len(blocks)
            if down.shape[0] % parts:
                raise LoraFormatError(f"{prefix}.lora_down.weight: {down.shape[0]} rows do not split into {parts} up blocks")
            chunks = down.chunk(parts, dim=0)
            delta = LowRankDelta.join(
                [LowRankDelta(chunks[i].clone(), blocks[i], scale) for i in range(parts)], blocks[0].shape[0]
            )
            ups = [(f"{prefix}.lora_up.blocks.{i}.weight", blocks[i]) for i in range(parts)]
        delta.sources = (SourceTensor(f"{prefix}.lora_down.weight", tuple(down.shape), "down"),) + tuple(
            SourceTensor(key, tuple(up.shape), "up", len(ups)) for key, up in ups
        )
        deltas[module] = delta
    return deltas


def upstream_tensors(weights: LoraWeights, layout: LoraLayout) -> tuple[dict[str, torch.Tensor], int]:
    """Upstream's tensors, every layer at the file's one rank; returns ``(tensors, rank)``."""
    planned = {module: delta.split(fused_outputs(module, layout)) for module, delta in weights.deltas.items()}
    rank = max(parts[0].rank for parts in planned.values())
    padded = sorted(module for module, parts in planned.items() if parts[0].rank != rank)
    if padded:
        log.info(
            "upstream LoRA format has one rank per file: %d layer(s) zero-padded to rank %d (exact), e.g. %s",
            len(padded), rank, padded[0],
        )
    tensors = {}
    for module, parts in planned.items():
        prefix = upstream_key(module, layout.upstream)
        parts = [part.padded(rank) for part in parts]
        tensors[f"{prefix}.lora_down.weight"] = torch.cat([part.down for part in parts], dim=0)
        if len(parts) == 1:
            tensors[f"{prefix}.lora_up.weight"] = parts[0].up
        else:
            for index, part in enumerate(parts):
                tensors[f"{prefix}.lora_up.blocks.{index}.weight"] = part.up
        tensors[f"{prefix}.alpha_scale"] = torch.tensor(weights.deltas[module].scale, dtype=torch.float32)
    return tensors, rank


# ---------------------------------------------------------------------------- ComfyUI
def comfyui_key(module: str, layout: LoraLayout) -> list[str]:
    """The wrapper's module names for frametuner module ``module`` (one per output part)."""
    block, local = split_block(module, layout)
    names = layout.comfyui_names.get(local)
    if names is None:
        raise LoraFormatError(
            f"layer {module!r} has no counterpart in the family's ComfyUI model "
            f"(mapped layers: {', '.join(sorted(layout.comfyui_names))}); leave it out of lora_target_modules"
        )
    return [layout.comfyui_prefix + join_block(block, name, layout) for name in names]


def comfyui_key_to_module(key: str, layout: LoraLayout) -> tuple[str, int, int, str]:
    """``diffusion_model.blocks.0.self_attn.k.lora_A.weight`` -> ``("blocks.0.attn.qkv", 1, 3, "down")``.

    Returns (frametuner module, output part, number of parts, slot) with slot one of
    ``down``/``up``/``alpha``; raises :class:`LoraFormatError` for a key it cannot map.
    """
    slots = {".lora_A.weight": "down", ".lora_B.weight": "up", ".alpha": "alpha"}
    suffix = next((s for s in slots if key.endswith(s)), None)
    if not key.startswith(layout.comfyui_prefix) or suffix is None:
        raise LoraFormatError(
            f"unmapped key {key!r}: ComfyUI LoRA keys are '{layout.comfyui_prefix}<module>' + .lora_A.weight, "
            ".lora_B.weight or .alpha"
        )
    block, local = split_block(key[len(layout.comfyui_prefix) : -len(suffix)], layout)
    inverse = _comfyui_inverse(layout)
    if local not in inverse or (block is None) != is_root_layer(inverse[local][0], layout):
        raise LoraFormatError(f"unmapped key {key!r}: {local!r} is not a layer of this family's ComfyUI model")
    layer, part, parts = inverse[local]
    return join_block(block, layer, layout), part, parts, slots[suffix]


def _comfyui_inverse(layout: LoraLayout) -> dict[str, tuple[str, int, int]]:
    return {name: (layer, part, len(names)) for layer, names in layout.comfyui_names.items() for part, name in enumerate(names)}


def _read_comfyui(tensors: dict[str, torch.Tensor], layout: LoraLayout) -> dict[str, LowRankDelta]:
    found: dict[str, dict[int, dict[str, tuple[str, torch.Tensor]]]] = {}
    parts_of: dict[str, int] = {}
    for key, tensor in tensors.items():
        module, part, parts, slot = comfyui_key_to_module(key, layout)
        found.setdefault(module, {}).setdefault(part, {})[slot] = (key, tensor)
        parts_of[module] = parts

    deltas = {}
    for module, by_part in found.items():
        parts: list[LowRankDelta | None] = [None] * parts_of[module]
        sources = []
        for index, slots in sorted(by_part.items()):
            if "down" not in slots or "up" not in slots:
                key = next(iter(slots.values()))[0]
                raise LoraFormatError(f"{key}: ComfyUI LoRA layer without both .lora_A.weight and .lora_B.weight")
            (down_key, down), (up_key, up) = slots["down"], slots["up"]
            # ComfyUI's rule: scale = alpha / rank, and 1.0 without an alpha.
            scale = float(slots["alpha"][1]) / down.shape[0] if "alpha" in slots else 1.0
            parts[index] = LowRankDelta(down, up, scale)
            sources += [SourceTensor(down_key, tuple(down.shape), "down"), SourceTensor(up_key, tuple(up.shape), "up", len(parts))]
        part_out = next(p for p in parts if p is not None).out_features
        delta = LowRankDelta.join(parts, part_out)
        delta.sources = tuple(sources)
        deltas[module] = delta
    return deltas


def comfyui_tensors(weights: LoraWeights, layout: LoraLayout) -> dict[str, torch.Tensor]:
    tensors = {}
    for module, delta in weights.deltas.items():
        names = comfyui_key(module, layout)
        for name, part in zip(names, delta.split(len(names))):
            tensors[f"{name}.lora_A.weight"] = part.down
            tensors[f"{name}.lora_B.weight"] = part.up
            tensors[f"{name}.alpha"] = torch.tensor(part.scale * part.rank, dtype=torch.float32)
    return tensors


# ---------------------------------------------------------------------------- PEFT
def _peft_files(path: Path) -> tuple[Path, Path | None]:
    if path.is_dir():
        weights_file, config_file = path / PEFT_WEIGHTS_NAME, path / PEFT_CONFIG_NAME
    else:
        weights_file, config_file = path, path.parent / PEFT_CONFIG_NAME
    return weights_file, (config_file if config_file.exists() else None)


def _peft_config(config_file: Path | None, metadata: dict[str, str], where: Path) -> dict | None:
    if config_file is not None:
        try:
            return json.loads(config_file.read_text())
        except json.JSONDecodeError as error:
            raise LoraFormatError(f"{config_file}: not valid JSON ({error})") from None
    if "adapter_config" in metadata:
        return json.loads(metadata["adapter_config"])
    return None


def _read_peft(tensors: dict[str, torch.Tensor], config: dict | None, where: Path) -> dict[str, LowRankDelta]:
    from peft.utils.other import get_pattern_key

    if config is not None and (config.get("peft_type", "LORA") != "LORA" or config.get("use_dora")):
        raise LoraFormatError(f"{where}: only plain LoRA adapters are supported (peft_type LORA, no DoRA)")
    found: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in tensors.items():
        name = next((key[len(p) :] for p in _PEFT_READ_PREFIXES if key.startswith(p)), key)
        match = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", name) or re.fullmatch(r"(.+)\.(alpha)", name)
        if not match:
            raise LoraFormatError(f"{where}: unmapped key {key!r} (PEFT LoRA keys end in .lora_A.weight / .lora_B.weight)")
        slot = {"A": "down", "B": "up", "alpha": "alpha"}[match.group(2)]
        found.setdefault(match.group(1), {})[slot] = (key, tensor)

    if config is None and not any("alpha" in slots for slots in found.values()):
        log.warning("%s: no adapter_config.json and no alpha tensors; assuming scale 1 (alpha = rank)", where)
    deltas = {}
    for module, slots in found.items():
        if "down" not in slots or "up" not in slots:
            raise LoraFormatError(f"{where}: layer {module!r} lacks its lora_A or lora_B weight")
        (down_key, down), (up_key, up) = slots["down"], slots["up"]
        rank = down.shape[0]
        if config is not None:
            alpha_pattern = config.get("alpha_pattern") or {}
            alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config.get("lora_alpha", 8))
            scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        elif "alpha" in slots:
            scale = float(slots["alpha"][1]) / rank
        else:
            scale = 1.0
        deltas[module] = LowRankDelta(
            down, up, float(scale),
            (SourceTensor(down_key, tuple(down.shape), "down"), SourceTensor(up_key, tuple(up.shape), "up")),
        )
    return deltas


def peft_tensors(weights: LoraWeights) -> dict[str, torch.Tensor]:
    """Keys as ``get_peft_model_state_dict`` returns them (no ``base_model.model.`` prefix)."""
    tensors = {}
    for module, delta in weights.deltas.items():
        tensors[f"{module}.lora_A.weight"] = delta.down
        tensors[f"{module}.lora_B.weight"] = delta.up
    return tensors


def peft_config_for(weights: LoraWeights, *, dropout: float = 0.0):
    """A ``LoraConfig`` reproducing every layer's rank and scale (patterns for the exceptions)."""
    from peft import LoraConfig

    ranks = {module: delta.rank for module, delta in weights.deltas.items()}
    alphas = {module: _tidy(delta.scale * delta.rank) for module, delta in weights.deltas.items()}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=sorted(weights.deltas),
        rank_pattern={re.escape(m): r for m, r in sorted(ranks.items()) if r != rank},
        alpha_pattern={re.escape(m): a for m, a in sorted(alphas.items()) if a != alpha},
        base_model_name_or_path=weights.metadata.get("base_model"),
    )


def _config_dict(config) -> dict:
    """``LoraConfig.to_dict()`` made JSON-ready the way ``save_pretrained`` does (sets -> lists)."""
    return {
        key: sorted(value) if isinstance(value, set) else value
        for key, value in config.to_dict().items()
        if not key.startswith("_")
    }


# ---------------------------------------------------------------------------- shared
def _format_of_keys(keys: Iterable[str], where: Path, layout: LoraLayout) -> str:
    keys = list(keys)
    if layout.upstream is not None and any(key.startswith(layout.upstream.key_prefix) for key in keys):
        return "upstream"
    lora_keys = [key for key in keys if ".lora_A." in key or ".lora_B." in key]
    if lora_keys and all(key.startswith(layout.comfyui_prefix) for key in lora_keys):
        return "comfyui"
    if lora_keys:
        return "peft"
    raise LoraFormatError(
        f"{where}: not a LoRA in a format frametuner reads (PEFT, the family's upstream format or ComfyUI); "
        f"first keys: {', '.join(keys[:3]) or '(none)'}"
    )


def _describe(weights: LoraWeights, layout: LoraLayout, rank: int | None, *, format_name: str) -> dict[str, str]:
    """Rank, alpha and targets for a file's header (rank: the file's own, if it has one)."""
    ranks = weights.ranks()
    rank = rank if rank is not None else (ranks.pop() if len(ranks) == 1 else None)
    scales = {delta.scale for delta in weights.deltas.values()}
    alpha = _tidy(scales.pop() * rank) if (rank is not None and len(scales) == 1) else None
    targets = sorted({split_block(module, layout)[1] for module in weights.deltas})
    return {
        "format": format_name,
        "rank": "mixed" if rank is None else str(rank),
        "alpha": "mixed" if alpha is None else str(alpha),
        "target_modules": json.dumps(targets),
    }


def _tidy(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def family_of_file(path: str | Path) -> str | None:
    """The registered family a LoRA file says it is for: its ``base_model`` metadata
    (``"<family>:<flavour>"``, written by training), else None."""
    from ..models.registry import families

    path = Path(path)
    weights_file = path / PEFT_WEIGHTS_NAME if path.is_dir() else path
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            base_model = (handle.metadata() or {}).get("base_model", "")
    except (OSError, ValueError, RuntimeError):  # missing or not safetensors: the reader says why
        return None
    family = base_model.split(":", 1)[0]
    return family if family in families() else None


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors via a temp file + ``os.replace``: a crash never leaves half a LoRA."""
    path.parent.mkdir(parents=True, exist_ok=True)
    owned, seen = {}, set()
    for key, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != tensor.nbytes:
            tensor = tensor.clone()  # safetensors refuses tensors that share storage
        seen.add(tensor.untyped_storage().data_ptr())
        owned[key] = tensor.cpu()
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(owned, str(temp), metadata={k: str(v) for k, v in metadata.items()})
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
