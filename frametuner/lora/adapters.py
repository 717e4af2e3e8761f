"""Training adapters through PEFT: wrap the DiT's Linears, checkpoint them, import, export.

The DiT is a diffusers ``ModelMixin`` without ``PeftAdapterMixin``, so adapters go in with
``peft.inject_adapter_in_model``: the model object stays the same, each target Linear
becomes a ``peft`` LoRA layer holding it as ``base_layer``, and only the LoRA weights
require grad. Targets resolve to exact module names first (so ``attn.proj`` can never
catch ``cross_attn.proj``, and the patch-embedding Conv3d is refused).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import Linear as PeftLoraLinear
from peft.tuners.lora import LoraLayer

from ..config.errors import did_you_mean
from .apply import _base_linear, check_fits
from .delta import LoraWeights, LowRankDelta
from .errors import LoraError
from .formats import FORMATS, peft_config_for, read_lora, write_lora
from .layout import family_for_model, fused_outputs, is_root_layer, layout_for_model, unwrap_peft

log = logging.getLogger("frametuner.lora")

ADAPTER_NAME = "default"
# Where export_lora puts each format inside its output folder.
EXPORT_NAMES = {"peft": "peft", "upstream": "lora_upstream.safetensors", "comfyui": "lora_comfyui.safetensors"}


class FP32LoraLinear(PeftLoraLinear):
    """PEFT's LoRA Linear for layers that compute in float32 (``FP32Linear``: adaLN, final layer).

    Upstream runs these layers, LoRA included, under float32 autocast; plain PEFT would run
    the low-rank path in the LoRA weights' dtype (bf16 under mixed precision). Here it is
    float32 whatever the storage dtype or an enclosing autocast.
    """

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None or getattr(self, "lora_variant", None):
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs).float()
        with torch.autocast(x.device.type, enabled=False):
            x32 = x.float()
            for name in self.active_adapters:
                if name not in self.lora_A:
                    continue
                down = self.lora_A[name].weight.float()
                up = self.lora_B[name].weight.float()
                result = result + F.linear(F.linear(self.lora_dropout[name](x32), down), up) * self.scaling[name]
        return result


def resolve_lora_targets(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """Exact module names for ``lora_target_modules`` entries.

    A target that starts with one of the model's other top-level children
    (``final_layer.linear``) or with ``blocks.<i>.`` names one module from the root; any
    other (``attn.proj``, ``adaLN_modulation.1``) names that layer inside every block.
    Every match must be a Linear.
    """
    layout = layout_for_model(model)
    model = unwrap_peft(model)
    modules = dict(model.named_modules())
    depth = len(getattr(model, layout.block_prefix))
    resolved: list[str] = []
    for target in targets:
        if is_root_layer(target, layout) or target.startswith(layout.block_prefix + "."):
            names = [target] if target in modules else []
        else:
            names = [f"{layout.block_prefix}.{i}.{target}" for i in range(depth)]
            names = [name for name in names if name in modules]
        if not names:
            linear = _linear_names(modules, layout)
            raise LoraError(
                f"lora_target_modules: {target!r} matches no layer{did_you_mean(target, linear)}; "
                f"Linear layers: {', '.join(linear)}"
            )
        for name in names:
            base = _base_linear(modules[name])
            if not isinstance(base, nn.Linear):
                raise LoraError(
                    f"lora_target_modules: {target!r} is a {type(base).__name__}, not a Linear; LoRA adapts "
                    "Linear layers only (the patch-embedding Conv3d stays frozen)"
                )
        resolved += [name for name in names if name not in resolved]
    return resolved


def add_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    adapter_name: str = ADAPTER_NAME,
    lora_dtype: torch.dtype = torch.float32,
    family=None,
) -> LoraConfig:
    """Wrap the DiT's target Linears with new trainable LoRA adapters (PEFT), in place.

    ``alpha`` defaults to ``rank`` (scale 1); ``target_modules`` to the family's
    ``default_lora_targets``. ``family``: the model's ``ModelFamily`` (default: found from
    the model). New ``lora_B`` are zero, so the model's output is unchanged until training
    moves them. LoRA weights are kept in ``lora_dtype`` (float32: the optimiser state's
    precision) whatever the base weights are stored in.
    """
    if target_modules is None:
        if family is None:
            from ..models.family import family_of

            family = family_of(model)
        target_modules = family.default_lora_targets
    names = resolve_lora_targets(model, target_modules)
    config = LoraConfig(
        r=rank,
        lora_alpha=float(alpha if alpha is not None else rank),
        lora_dropout=dropout,
        target_modules=names,
        init_lora_weights=True,
    )
    _inject(model, config, adapter_name, lora_dtype)
    log.info("LoRA rank %d alpha %g on %d layers (%s)", rank, config.lora_alpha, len(names), ", ".join(target_modules))
    return config


def add_lora_from_file(
    model: nn.Module,
    path: str | Path,
    *,
    dropout: float = 0.0,
    adapter_name: str = ADAPTER_NAME,
    lora_dtype: torch.dtype = torch.float32,
    keep_block_structure: bool = True,
) -> LoraConfig:
    """Start training from a LoRA file of any format: exact PEFT adapters holding its weights.

    Layers whose rank or scale differ from the rest get them through ``rank_pattern`` /
    ``alpha_pattern``. A fused layer from an upstream file with its own down chunk per
    output part becomes a rank ``parts * r`` adapter with a block-diagonal ``lora_B``;
    with ``keep_block_structure`` its off-diagonal gradients are zeroed, so the trained
    adapter still exports to upstream's format at rank ``r`` (any optimiser leaves
    zero-gradient zeros at zero).
    """
    layout = layout_for_model(model)
    weights = read_lora(path, family=family_for_model(model))
    check_fits(model, weights, str(path))
    config = peft_config_for(weights, dropout=dropout)
    _inject(model, config, adapter_name, lora_dtype)
    modules = dict(unwrap_peft(model).named_modules())
    with torch.no_grad():
        for name, delta in weights.deltas.items():
            layer = modules[name]
            layer.lora_A[adapter_name].weight.copy_(delta.down)
            layer.lora_B[adapter_name].weight.copy_(delta.up)
            if abs(layer.scaling[adapter_name] - delta.scale) > 1e-6 * abs(delta.scale):
                raise LoraError(f"{path}: PEFT scale {layer.scaling[adapter_name]} for {name!r} != file's {delta.scale}")
            parts = fused_outputs(name, layout)
            if keep_block_structure and delta.block_diagonal(parts):
                layer.lora_B[adapter_name].weight.register_hook(_block_diagonal_gradient(parts))
    log.info("LoRA initialised from %s (%s format, %d layers)", path, weights.format, len(weights.deltas))
    return config


def lora_state_dict(model: nn.Module, adapter_name: str = ADAPTER_NAME) -> dict[str, torch.Tensor]:
    """The trainable LoRA weights for a checkpoint (keys ``<module>.lora_A.weight`` ...)."""
    return get_peft_model_state_dict(model, adapter_name=adapter_name)


def set_lora_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str = ADAPTER_NAME) -> None:
    """Load :func:`lora_state_dict`'s output back (resume); every LoRA weight must be there."""
    result = set_peft_model_state_dict(model, state_dict, adapter_name=adapter_name)
    missing = [key for key in result.missing_keys if ".lora_" in key]
    if result.unexpected_keys or missing:
        raise LoraError(
            f"LoRA checkpoint does not match the model's adapters: "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:1]}), "
            f"{len(missing)} missing (e.g. {missing[:1]}); was it saved with other lora_target_modules or rank?"
        )


def lora_weights_from_model(
    model: nn.Module, adapter_name: str = ADAPTER_NAME, metadata: dict[str, str] | None = None
) -> LoraWeights:
    """The model's PEFT adapter as :class:`LoraWeights` (the form every format writes from)."""
    deltas = {}
    for name, module in unwrap_peft(model).named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            down, up = (whole_tensor(p[adapter_name].weight) for p in (module.lora_A, module.lora_B))
            deltas[name] = LowRankDelta(down, up, float(module.scaling[adapter_name]))
    if not deltas:
        raise LoraError(f"the model has no LoRA adapter {adapter_name!r}; wrap it with add_lora first")
    return LoraWeights(deltas, dict(metadata or {}))


def export_lora(
    model: nn.Module,
    output_dir: str | Path,
    formats: Iterable[str] = FORMATS,
    *,
    adapter_name: str = ADAPTER_NAME,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
    weights: LoraWeights | None = None,
) -> dict[str, Path]:
    """Write the model's LoRA in each format under ``output_dir`` (names: :data:`EXPORT_NAMES`).

    ``metadata`` (e.g. ``{"base_model": ...}``) goes into every file's header; ``dtype``
    casts the written tensors (None keeps the training dtype). Call it on the main
    process; under FSDP2 every rank must call :func:`lora_weights_from_model` (it gathers)
    and the main process passes the result as ``weights``.
    """
    meta = {"software": _software(), **(metadata or {})}
    if weights is None:
        weights = lora_weights_from_model(model, adapter_name, meta)
    else:
        weights = LoraWeights(weights.deltas, {**weights.metadata, **meta})
    weights = weights.to(dtype)
    family = family_for_model(model)
    output_dir = Path(output_dir)
    written = {}
    for fmt in formats:
        if fmt not in EXPORT_NAMES:
            raise LoraError(f"unknown LoRA export format {fmt!r}; use {', '.join(EXPORT_NAMES)}")
        written[fmt] = write_lora(weights, output_dir / EXPORT_NAMES[fmt], fmt, family=family)
    return written


# ---------------------------------------------------------------------------- helpers
def _inject(model: nn.Module, config: LoraConfig, adapter_name: str, lora_dtype: torch.dtype) -> None:
    layout = layout_for_model(model)
    if layout.fp32_linear_types:
        config._register_custom_module({cls: FP32LoraLinear for cls in layout.fp32_linear_types})
    inject_adapter_in_model(config, unwrap_peft(model), adapter_name=adapter_name)
    for module in unwrap_peft(model).modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            module.lora_A[adapter_name].to(lora_dtype)
            module.lora_B[adapter_name].to(lora_dtype)


def _block_diagonal_gradient(parts: int):
    """Gradient hook: keep only the diagonal blocks of a block-diagonal ``lora_B``."""

    def mask(grad: torch.Tensor) -> torch.Tensor:
        out, rank = grad.shape
        keep = torch.eye(parts, dtype=grad.dtype, device=grad.device)[:, None, :, None]
        return (grad.view(parts, out // parts, parts, rank // parts) * keep).view(out, rank)

    return mask


def _software() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"frametuner {version('frametuner')}"
    except PackageNotFoundError:
        return "frametuner"


def whole_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A detached local tensor, gathering a sharded (FSDP2 DTensor) parameter first."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _linear_names(modules: dict[str, nn.Module], layout) -> list[str]:
    """Linear layer names a target may use: block-local ones (from block 0) and root ones."""
    prefix = f"{layout.block_prefix}.0."
    names = []
    for name, module in modules.items():
        if not isinstance(module, nn.Linear) or ".base_layer" in name or ".lora_" in name:
            continue
        if name.startswith(prefix):
            names.append(name[len(prefix) :])
        elif not name.startswith(layout.block_prefix + "."):
            names.append(name)
    return names
