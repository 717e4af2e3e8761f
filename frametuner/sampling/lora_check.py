"""Does a LoRA file fit the model? Answered from the file's header and the model's config alone.

``frametuner sample`` must refuse a LoRA made for another architecture before it spends
minutes loading 54 GB of weights, so this reads only the safetensors header (names and
shapes, no tensors) and compares it with a DiT built on the ``meta`` device (no memory).
It understands the layouts ``frametuner.lora.apply_lora`` reads: upstream LongCat-Video
(``lora___lorahyphen___...lora_down/lora_up[.blocks.i]``), PEFT/diffusers (``lora_A/lora_B``)
and ComfyUI-style ``lora_down/lora_up`` keys.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

UPSTREAM_PREFIX = "lora___lorahyphen___"
UPSTREAM_SEPARATOR = "___lorahyphen___"
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
    if not path.is_file():
        raise LoraFileError(f"{path}: file not found; give the path of a LoRA .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:  # safetensors raises several types for a bad header
        raise LoraFileError(
            f"{path}: cannot be read as safetensors ({type(error).__name__}: {error}); "
            "LoRA files must be .safetensors (PEFT, upstream LongCat-Video or ComfyUI format)"
        ) from None


def _module_path(raw: str) -> str:
    if raw.startswith(UPSTREAM_PREFIX):
        return raw[len(UPSTREAM_PREFIX) :].replace(UPSTREAM_SEPARATOR, ".")
    for prefix in MODULE_PREFIXES:
        if raw.startswith(prefix):
            return raw[len(prefix) :]
    return raw


def lora_modules(header: dict[str, tuple[int, ...]], path: str | Path = "") -> dict[str, LoraModule]:
    """Group a LoRA file's keys by the module they wrap; raises if nothing in it is a LoRA weight."""
    modules: dict[str, LoraModule] = defaultdict(LoraModule)
    unknown = []
    for key, shape in header.items():
        match = _KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        if match["ignored"]:
            continue
        module = modules[_module_path(match["module"])]
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
    modules = lora_modules(read_lora_header(path), path)
    layers = dict(model.named_modules())
    return [problem for name, entry in sorted(modules.items()) if (problem := _module_problem(name, entry, layers.get(name)))]


def describe_misfit(path: str | Path, problems: list[str], model_label: str = "this model") -> str:
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return (
        f"{path}: does not fit {model_label} ({len(problems)} layer(s) differ: {shown}); "
        "it was made for another architecture or model size: use a LoRA trained on this model"
    )
