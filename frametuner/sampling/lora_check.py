"""Does a LoRA file fit the model? Answered from the file's header and the model's config alone.

``frametuner sample`` must refuse a LoRA made for another architecture before it spends
minutes loading 54 GB of weights, so this reads only the safetensors header (names and
shapes, no tensors) and compares it with a DiT built on the ``meta`` device (no memory).
It understands every file and folder ``frametuner.lora.apply_lora`` reads (and training
writes): the family's upstream format (``<prefix>...lora_down/lora_up[.blocks.i]``, see its ``LoraLayout.upstream``),
PEFT/diffusers (``lora_A/lora_B``; a PEFT folder means its ``adapter_model.safetensors``)
and ComfyUI (the wrapper's layer names, mapped back to the model's by the family's
LoRA layout, the same mapping :mod:`frametuner.lora.formats` reads them with).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# Prefixes other tools put before the DiT's own module path.
MODULE_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "dit.")
_IGNORED_SUFFIXES = ("alpha", "alpha_scale", "lora_magnitude_vector", "dora_scale")
_KEY = re.compile(
    r"^(?P<module>.+?)\.(?:"
    r"(?P<down>lora_down|lora_A)(?:\.default)?\.weight"
    r"|(?P<up>lora_up|lora_B)(?:\.blocks\.(?P<block>\d+))?(?:\.default)?\.weight"
    r"|(?P<ignored>" + "|".join(_IGNORED_SUFFIXES) + r")(?:\.default)?(?:\.weight)?"
    r")$"
)


class LoraFileError(ValueError):
    """The file cannot be read as a LoRA (missing, not safetensors, no LoRA keys)."""


@dataclass
class LoraModule:
    """Shapes one wrapped layer has in the file."""

    down: tuple[int, ...] | None = None
    ups: dict[int, tuple[int, ...]] = field(default_factory=dict)  # block index (0 for plain layers) -> shape


def read_lora_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, without reading the tensors."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        from ..lora.formats import PEFT_WEIGHTS_NAME

        if not (path / PEFT_WEIGHTS_NAME).is_file():
            raise LoraFileError(
                f"{path}: a folder LoRA must hold {PEFT_WEIGHTS_NAME} (the PEFT folder training writes as lora/peft); "
                "give that folder or a LoRA .safetensors file"
            )
        path = path / PEFT_WEIGHTS_NAME
    if not path.is_file():
        raise LoraFileError(f"{path}: file not found; give the path of a LoRA .safetensors file or a PEFT folder")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:  # safetensors raises several types for a bad header
        raise LoraFileError(
            f"{path}: cannot be read as safetensors ({type(error).__name__}: {error}); "
            "LoRA files must be .safetensors (PEFT, the family's upstream or ComfyUI format)"
        ) from None


def _module_path(raw: str, layout=None) -> str:
    upstream = getattr(layout, "upstream", None)
    if upstream is not None and raw.startswith(upstream.key_prefix):
        return raw[len(upstream.key_prefix) :].replace(upstream.key_dot, ".")
    for prefix in MODULE_PREFIXES:
        if raw.startswith(prefix):
            return raw[len(prefix) :]
    return raw


def _is_comfyui(header: dict[str, tuple[int, ...]], layout) -> bool:
    lora_keys = [key for key in header if ".lora_A." in key or ".lora_B." in key]
    upstream = layout.upstream.key_prefix if layout.upstream is not None else None
    return bool(lora_keys) and all(key.startswith(layout.comfyui_prefix) for key in lora_keys) and not any(
        upstream and key.startswith(upstream) for key in header
    )


def _comfyui_modules(header: dict[str, tuple[int, ...]], path: str | Path, layout) -> dict[str, LoraModule]:
    """ComfyUI keys name the wrapper's separate Linears (``self_attn.k``): group them under the
    model's (fused) layer, one up block per part, the parts' downs stacked as upstream's are."""
    from ..lora.errors import LoraFormatError
    from ..lora.formats import comfyui_key_to_module

    downs: dict[str, dict[int, tuple[int, ...]]] = defaultdict(dict)
    modules: dict[str, LoraModule] = defaultdict(LoraModule)
    for key, shape in header.items():
        try:
            module, part, _, slot = comfyui_key_to_module(key, layout)
        except LoraFormatError as error:
            raise LoraFileError(f"{path}: {error}") from None
        if slot == "down":
            downs[module][part] = shape
        elif slot == "up":
            modules[module].ups[part] = shape
    for module, parts in downs.items():
        shapes = [parts[i] for i in sorted(parts)]
        if all(len(shape) == 2 and shape[1] == shapes[0][1] for shape in shapes):
            modules[module].down = (sum(shape[0] for shape in shapes), shapes[0][1])
        else:
            modules[module].down = shapes[0]
    return dict(modules)


def lora_modules(header: dict[str, tuple[int, ...]], path: str | Path = "", layout=None) -> dict[str, LoraModule]:
    """Group a LoRA file's keys by the module they wrap; raises if nothing in it is a LoRA weight.

    ``layout`` (the family's :class:`LoraLayout`) maps ComfyUI names back to the model's layers.
    """
    if layout is not None and _is_comfyui(header, layout):
        return _comfyui_modules(header, path, layout)
    modules: dict[str, LoraModule] = defaultdict(LoraModule)
    unknown = []
    for key, shape in header.items():
        match = _KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        if match["ignored"]:
            continue
        module = modules[_module_path(match["module"], layout)]
        if match["down"]:
            module.down = shape
        else:
            module.ups[int(match["block"] or 0)] = shape
    if not modules:
        example = f" (its first key is {next(iter(header))!r})" if header else " (it is empty)"
        raise LoraFileError(
            f"{path}: holds no LoRA weights{example}; expected keys ending in lora_down/lora_up (upstream, ComfyUI) "
            "or lora_A/lora_B (PEFT)"
        )
    if unknown:
        raise LoraFileError(f"{path}: {len(unknown)} key(s) are not LoRA weights, e.g. {unknown[0]!r}; is this a full model checkpoint?")
    return dict(modules)


def _module_problem(name: str, entry: LoraModule, layer) -> str | None:
    """Why ``entry`` cannot wrap ``layer``, or None when it can."""
    if layer is None:
        return f"{name!r} is not a layer of this model"
    in_features, out_features = getattr(layer, "in_features", None), getattr(layer, "out_features", None)
    if in_features is None:
        return f"{name!r} is a {type(layer).__name__}, not a Linear layer"
    if entry.down is None or not entry.ups:
        return f"{name!r} lacks its {'down (A)' if entry.down is None else 'up (B)'} weight"
    if len(entry.down) != 2 or entry.down[1] != in_features:
        return f"{name!r} down weight is {list(entry.down)} but the layer takes {in_features} inputs"
    pieces = len(entry.ups)
    if sorted(entry.ups) != list(range(pieces)):
        return f"{name!r} has up blocks {sorted(entry.ups)}, expected 0..{pieces - 1}"
    rank = entry.down[0] // pieces
    expected_up = [out_features // pieces, rank]
    if entry.down[0] % pieces or out_features % pieces or any(list(up) != expected_up for up in entry.ups.values()):
        shapes = ", ".join(str(list(entry.ups[i])) for i in sorted(entry.ups))
        return f"{name!r} up weight(s) {shapes} do not fit the layer's {out_features} outputs (expected {pieces} x {expected_up})"
    return None


def lora_fit_problems(path: str | Path, model) -> list[str]:
    """Every way the LoRA at ``path`` does not fit ``model`` (a DiT, e.g. on the meta device)."""
    modules = lora_modules(read_lora_header(path), path, _layout_of(model))
    layers = dict(model.named_modules())
    return [problem for name, entry in sorted(modules.items()) if (problem := _module_problem(name, entry, layers.get(name)))]


def _layout_of(model):
    """The model's family's LoRA layout (None for a model of no registered family)."""
    from ..lora.errors import LoraError
    from ..lora.layout import layout_for_model

    try:
        return layout_for_model(model)
    except LoraError:
        return None


def describe_misfit(path: str | Path, problems: list[str], model_label: str = "this model") -> str:
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return (
        f"{path}: does not fit {model_label} ({len(problems)} layer(s) differ: {shown}); "
        "it was made for another architecture or model size: use a LoRA trained on this model"
    )
