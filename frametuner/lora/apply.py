"""LoRAs for inference: added on top of a model's Linear layers, stackable and removable.

Semantics are upstream's multiple enabled LoRAs: ``y = W x + b + sum_i m_i * alpha_scale_i *
up_i(down_i(x))``. Each applied LoRA is a small module of non-persistent buffers attached
under the layer it adapts (so it follows ``.to()``, block swapping and offloading, and
never enters ``state_dict``), run by one forward hook per layer; nothing of the model is
replaced, so module names stay as they are for memory tools, PEFT and checkpoints.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .delta import LoraWeights, LowRankDelta
from .errors import LoraMismatchError
from .formats import read_lora
from .layout import family_for_model, fused_outputs, layout_for_model

CONTAINER = "frametuner_loras"  # attribute under each adapted layer
_ids = itertools.count()


class LoraBranch(nn.Module):
    """One LoRA on one layer: ``multiplier * alpha_scale * up(down(x))``.

    Fused layers whose up is block-diagonal (upstream's per-part down chunks) keep the
    parts apart (``up [parts, out/parts, r]``) instead of multiplying by the zeros.
    """

    def __init__(self, delta: LowRankDelta, *, multiplier: float, parts: int, dtype: torch.dtype, device, fp32: bool):
        super().__init__()
        self.multiplier = float(multiplier)
        self.alpha_scale = float(delta.scale)
        self.fp32 = fp32  # the layer computes in float32 (FP32Linear): so does its LoRA
        dtype = torch.float32 if fp32 else dtype
        self.blocked = delta.block_diagonal(parts)
        up = delta.up
        if self.blocked:
            up = torch.stack([rows.chunk(parts, dim=1)[i] for i, rows in enumerate(up.chunk(parts, dim=0))])
        self.register_buffer("down", delta.down.to(device=device, dtype=dtype), persistent=False)
        self.register_buffer("up", up.to(device=device, dtype=dtype).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp32:
            with torch.autocast(x.device.type, enabled=False):
                return self._low_rank(x.float())
        return self._low_rank(x.to(self.down.dtype))

    def _low_rank(self, x: torch.Tensor) -> torch.Tensor:
        down, up = self.down.to(x.dtype), self.up.to(x.dtype)  # no-ops unless the model was cast since
        hidden = F.linear(x, down)
        if self.blocked:
            parts, _, rank = up.shape
            hidden = torch.einsum("...pr,por->...po", hidden.unflatten(-1, (parts, rank)), up).flatten(-2)
        else:
            hidden = F.linear(hidden, up)
        return hidden * self.multiplier * self.alpha_scale


def _add_branches(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the layer's output plus every applied LoRA's contribution (summed first, as upstream)."""
    x = args[0]
    total = None
    for branch in getattr(module, CONTAINER).values():
        contribution = branch(x).to(x.dtype)
        total = contribution if total is None else total + contribution
    return output if total is None else output + total


@dataclass(eq=False)
class LoraHandle:
    """What :func:`apply_lora` applied; ``remove()`` takes exactly that LoRA off again."""

    name: str
    source: str
    layers: list[nn.Module] = field(default_factory=list)
    registry: list["LoraHandle"] = field(default_factory=list, repr=False)  # the model's applied LoRAs

    @property
    def multiplier(self) -> float:
        return getattr(self.layers[0], CONTAINER)[self.name].multiplier

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        for layer in self.layers:
            getattr(layer, CONTAINER)[self.name].multiplier = float(value)

    def remove(self) -> None:
        for layer in self.layers:
            container = getattr(layer, CONTAINER, None)
            if container is None or self.name not in container:
                continue
            del container[self.name]
            if len(container) == 0:
                container.hook.remove()
                delattr(layer, CONTAINER)
        self.layers = []
        if self in self.registry:
            self.registry.remove(self)


def apply_lora(model: nn.Module, path: str | Path | LoraWeights, multiplier: float = 1.0) -> LoraHandle:
    """Apply a LoRA file of any of the three formats (detected from its keys) for inference.

    Several calls stack: their contributions add. Nothing is applied unless every layer
    fits; otherwise :class:`LoraMismatchError` names the first key that does not.
    """
    weights = path if isinstance(path, LoraWeights) else read_lora(path, family=family_for_model(model))
    source = str(path) if not isinstance(path, LoraWeights) else "(in-memory LoRA)"
    layout = layout_for_model(model)
    layers = check_fits(model, weights, source)
    if not hasattr(model, "_frametuner_lora_handles"):
        model._frametuner_lora_handles = []
    handle = LoraHandle(name=f"lora{next(_ids)}", source=source, registry=model._frametuner_lora_handles)
    for module_name, delta in weights.deltas.items():
        layer = layers[module_name]
        base = _base_linear(layer)
        weight = base.weight
        branch = LoraBranch(
            delta,
            multiplier=multiplier,
            parts=fused_outputs(module_name, layout),
            dtype=weight.dtype if weight.is_floating_point() else torch.float32,
            device=weight.device,
            fp32=isinstance(base, layout.fp32_linear_types),
        )
        container = getattr(layer, CONTAINER, None)
        if container is None:
            container = nn.ModuleDict()
            layer.add_module(CONTAINER, container)
            container.hook = layer.register_forward_hook(_add_branches)
        container[handle.name] = branch
        handle.layers.append(layer)
    handle.registry.append(handle)
    return handle


def remove_loras(model: nn.Module) -> int:
    """Take every LoRA applied with :func:`apply_lora` off ``model``; returns how many."""
    handles = list(getattr(model, "_frametuner_lora_handles", []))
    for handle in handles:
        handle.remove()
    return len(handles)


def check_fits(model: nn.Module, weights: LoraWeights, source: str) -> dict[str, nn.Module]:
    """Every LoRA layer's target in ``model``, or the first key that does not fit it."""
    modules = dict(model.named_modules())
    layers = {}
    for module_name, delta in weights.deltas.items():
        layer = modules.get(module_name)
        first_key = delta.sources[0].key if delta.sources else module_name
        if layer is None:
            raise LoraMismatchError(
                f"LoRA for another architecture: {source}: key {first_key!r} targets layer {module_name!r}, "
                "which this model does not have"
            )
        base = _base_linear(layer)
        if not isinstance(base, nn.Linear):
            raise LoraMismatchError(
                f"LoRA for another architecture: {source}: key {first_key!r} targets {module_name!r}, "
                f"a {type(base).__name__}, not a Linear layer"
            )
        if (delta.in_features, delta.out_features) != (base.in_features, base.out_features):
            raise LoraMismatchError(_shape_message(source, module_name, delta, base))
        layers[module_name] = layer
    return layers


def _shape_message(source: str, module_name: str, delta: LowRankDelta, base: nn.Linear) -> str:
    for tensor in delta.sources:
        if tensor.role == "down":
            expected = (tensor.shape[0], base.in_features)
        else:
            expected = (base.out_features // tensor.parts, tensor.shape[1])
        if expected != tensor.shape:
            return (
                f"LoRA for another architecture: {source}: key {tensor.key!r} has shape {list(tensor.shape)}, "
                f"expected {list(expected)} for the model's {module_name!r} (Linear {base.in_features} -> {base.out_features})"
            )
    return (
        f"LoRA for another architecture: {source}: layer {module_name!r} is {delta.in_features} -> "
        f"{delta.out_features} in the LoRA, Linear {base.in_features} -> {base.out_features} in the model"
    )


def _base_linear(layer: nn.Module) -> nn.Module:
    """The Linear itself, also under a PEFT LoRA wrapper (apply_lora works on a training model)."""
    get_base_layer = getattr(layer, "get_base_layer", None)
    return get_base_layer() if callable(get_base_layer) else layer
