"""``fp8_compute``: the frozen base Linear layers run their matmuls in float8 (sm89+).

torchao's float8 training (``torchao.float8``: ``Float8Linear``, dynamic rowwise or
tensorwise scales, ``torch._scaled_mm``) casts a Linear's input and weight to float8 in
the forward and its output gradient and weight in the backward. Its autograd function
always computes the weight gradient too: a third GEMM per layer, wasted on a frozen LoRA
base. :class:`FrozenFloat8Linear` is torchao's ``Float8Linear`` with the same casts and
GEMM configs for the output and the input gradient (torchao's own code paths:
``hp_tensor_to_float8_dynamic`` and its float8 tensor's ``mm``) and no weight gradient;
it saves only the weight for the backward, not the input.

What is converted: the plain, frozen ``nn.Linear`` layers inside the DiT blocks whose
dimensions are multiples of 16 (inside PEFT's LoRA layers that is each ``base_layer``).
LoRA weights (and their gradients), the float32 layers (``FP32Linear``: modulation,
timestep MLP, final projection), norms and embedders are untouched. Weights keep their
dtype and their Parameter objects, so block swap, activation offload, checkpoints and LoRA
export see the same model. Swapped into place by torchao's ``swap_linear_layers`` (the
machinery of ``convert_to_float8_training``).
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import torch
import torch.nn as nn

from ..config.precision import FP8_COMPUTE_LAYERS
from .errors import MemoryOptionError
from .quantise import FP8_MIN_CAPABILITY, _installed, is_quantisable

log = logging.getLogger(__name__)

SCALINGS = ("rowwise", "tensorwise")


def check_fp8_compute_supported(device: torch.device | str) -> None:
    """Raise :class:`MemoryOptionError` with the fix when ``fp8_compute`` cannot run on ``device``."""
    device = torch.device(device)
    if device.type != "cuda":
        raise MemoryOptionError(
            f"fp8_compute needs a CUDA GPU with float8 tensor cores (sm89+: RTX 40xx, L4, H100); the model runs on "
            f"{device.type}; remove fp8_compute (bf16 compute)"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise MemoryOptionError(
            f"fp8_compute needs float8 tensor cores (sm89+: RTX 40xx, L4, H100); {name} is sm{capability[0]}{capability[1]}; "
            "remove fp8_compute (bf16 compute)"
        )
    if not _installed("torchao"):
        raise MemoryOptionError("fp8_compute needs torchao (its float8 kernels and scaling): pip install torchao (or frametuner[fp8])")


def float8_config(scaling: str = "rowwise", *, emulate: bool = False):
    """torchao's float8 recipe for ``scaling`` (``emulate``: high-precision matmuls, CPU tests)."""
    from dataclasses import replace

    from torchao.float8 import Float8LinearConfig

    if scaling not in SCALINGS:
        raise ValueError(f"fp8_compute_scaling {scaling!r} is not one of {SCALINGS}")
    config = Float8LinearConfig.from_recipe_name(scaling)
    return replace(config, emulate=True) if emulate else config


def _cast(tensor: torch.Tensor, cast_config, mm_config, role, axis: int, round_scales: bool):
    """torchao's dynamic float8 cast of ``tensor`` (or ``tensor`` itself when the cast is off)."""
    from torchao.float8.config import ScalingType
    from torchao.float8.distributed_utils import tensor_already_casted_to_fp8
    from torchao.float8.float8_scaling_utils import get_maybe_axiswise_dim, hp_tensor_to_float8_dynamic

    if tensor_already_casted_to_fp8(tensor) or cast_config.scaling_type is ScalingType.DISABLED:
        return tensor
    return hp_tensor_to_float8_dynamic(
        tensor, cast_config.target_dtype, mm_config, gemm_input_role=role, scaling_granularity=cast_config.scaling_granularity,
        axiswise_dim=get_maybe_axiswise_dim(axis, cast_config.scaling_granularity), round_scales_to_power_of_2=round_scales,
    )


class _FrozenFloat8MatMul(torch.autograd.Function):
    """``input @ weight_t`` in float8 with the gradient of the input only (the weight is frozen)."""

    @staticmethod
    def forward(ctx, input_hp: torch.Tensor, weight_hp_t: torch.Tensor, linear_mm_config, config):
        from torchao.float8.float8_training_tensor import GemmInputRole

        ctx.save_for_backward(weight_hp_t)
        ctx.linear_mm_config, ctx.config = linear_mm_config, config
        c = config
        input_fp8 = _cast(input_hp, c.cast_config_input, linear_mm_config, GemmInputRole.INPUT, -1, c.round_scales_to_power_of_2)
        weight_fp8_t = _cast(weight_hp_t, c.cast_config_weight, linear_mm_config, GemmInputRole.WEIGHT, 0, c.round_scales_to_power_of_2)
        shape = input_fp8.shape
        out = torch.mm(input_fp8.reshape(-1, shape[-1]), weight_fp8_t)
        return out.reshape(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        from torchao.float8.float8_training_tensor import GemmInputRole

        (weight_hp_t,) = ctx.saved_tensors
        c, mm_config = ctx.config, ctx.linear_mm_config
        shape = grad_output.shape
        grad_fp8 = _cast(grad_output.reshape(-1, shape[-1]), c.cast_config_grad_output, mm_config, GemmInputRole.GRAD_OUTPUT, -1, c.round_scales_to_power_of_2)
        weight_fp8 = _cast(weight_hp_t, c.cast_config_weight_for_grad_input, mm_config, GemmInputRole.WEIGHT, -1, c.round_scales_to_power_of_2)
        grad_input = torch.mm(grad_fp8, weight_fp8.t())
        return grad_input.reshape(*shape[:-1], grad_input.shape[-1]), None, None, None


_FrozenFloat8MatMul = torch._dynamo.allow_in_graph(_FrozenFloat8MatMul)  # as torchao's own matmul: traced by AOTAutograd


@functools.cache
def _frozen_float8_linear_class():
    from torchao.float8.float8_linear import Float8Linear

    class FrozenFloat8Linear(Float8Linear):
        """torchao's ``Float8Linear`` for a frozen weight: float8 forward and input gradient, no weight gradient."""

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            if self.weight.requires_grad:
                raise RuntimeError("FrozenFloat8Linear computes no weight gradient, but its weight requires one")
            if torch.is_autocast_enabled(input.device.type):
                input = input.to(torch.get_autocast_dtype(input.device.type))
            output = _FrozenFloat8MatMul.apply(input, self.weight.t(), self.linear_mm_config, self.config)
            if self.bias is not None:
                output = output + self.bias.to(output.dtype)
            return output

    return FrozenFloat8Linear


def converts_to_fp8(module: nn.Module, name: str) -> bool:
    """The layers ``fp8_compute`` runs in float8: plain frozen base Linears (not LoRA, not
    FP32Linear) whose both dimensions are multiples of 16 (float8 GEMMs need that)."""
    return (
        is_quantisable(module, name)
        and not module.weight.requires_grad
        and module.weight.is_floating_point()
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def convert_to_fp8_compute(model: nn.Module, scaling: str = "rowwise", *, emulate: bool = False, include: Callable[[str], bool] | None = None) -> int:
    """Swap the frozen base Linears of ``model.blocks`` for float8 ones; returns how many.

    Device-independent (``emulate`` runs the matmuls in high precision, for CPU tests); the
    trainer and sampler go through :func:`enable_fp8_compute`, which checks the GPU first.
    ``include`` (a layer's name inside its block, e.g. ``"ffn.w1"`` or PEFT's
    ``"ffn.w1.base_layer"``) narrows the conversion to some layers (the benchmark's quality
    breakdown); default: every eligible layer.
    """
    from torchao.float8.float8_linear_utils import swap_linear_layers

    cls = _frozen_float8_linear_class()
    config = float8_config(scaling, emulate=emulate)
    count = 0

    def convert(linear: nn.Linear) -> nn.Module:
        nonlocal count
        count += 1
        return cls.from_float(linear, config=config)

    for index, block in enumerate(model.blocks):
        swap_linear_layers(
            block, convert, module_filter_fn=lambda module, name: converts_to_fp8(module, name) and (include is None or include(name))
        )
    return count


def revert_fp8_compute(model: nn.Module) -> int:
    """Undo :func:`convert_to_fp8_compute`: every float8 layer of ``model.blocks`` back to an
    ``nn.Linear`` holding the same weight and bias Parameters. Returns how many."""
    if not _installed("torchao"):  # nothing can have been converted
        return 0
    cls = _frozen_float8_linear_class()
    count = 0
    for block in model.blocks:
        for name, module in list(block.named_modules()):
            if not isinstance(module, cls):
                continue
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            linear.weight = module.weight
            if module.bias is not None:
                linear.bias = module.bias
            parent_name, _, child = name.rpartition(".")
            setattr(block.get_submodule(parent_name) if parent_name else block, child, linear)
            count += 1
    return count


def fp8_layer_filter(layers: str, family) -> Callable[[str], bool] | None:
    """``fp8_compute_layers`` as a name filter for :func:`convert_to_fp8_compute`: ``all``
    (None: every eligible layer), ``all_but_cross`` (every layer but the family's
    ``cross_attention_layers``) or ``ffn`` (its ``feedforward_layers`` only)."""
    if layers == "all":
        return None
    if layers not in FP8_COMPUTE_LAYERS:
        raise ValueError(f"fp8_compute_layers {layers!r} is not one of {list(FP8_COMPUTE_LAYERS)}")
    if layers == "all_but_cross":
        cross = tuple(family.cross_attention_layers)  # a family without cross-attention: all of them
        return (lambda name: not name.startswith(cross)) if cross else None
    prefixes = tuple(family.feedforward_layers)
    if not prefixes:
        raise MemoryOptionError(f"fp8_compute_layers 'ffn': the {family.name} family names no feed-forward layers; use 'all'")
    return lambda name: name.startswith(prefixes)


def enable_fp8_compute(model: nn.Module, device: torch.device | str, *, scaling: str = "rowwise", include: Callable[[str], bool] | None = None) -> int:
    """``fp8_compute``: check the device, then :func:`convert_to_fp8_compute` (before block
    swap, LoRAs for inference and compilation; ``include``: :func:`fp8_layer_filter`).
    Returns the number of converted layers."""
    check_fp8_compute_supported(device)
    trainable = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and is_quantisable(module, name) and module.weight.requires_grad]
    if trainable:
        raise MemoryOptionError(
            f"fp8_compute runs frozen base layers only, but {trainable[0]} (and {len(trainable) - 1} more) train their "
            "weights; use model_type 'lora' with fp8_compute"
        )
    count = convert_to_fp8_compute(model, scaling, include=include)
    if count == 0:
        raise MemoryOptionError(
            "fp8_compute found no frozen base Linear layer (bf16/fp16, dimensions multiples of 16) in the model's blocks; "
            "freeze the base (model_type 'lora') or remove fp8_compute"
        )
    log.info("fp8 compute: %d frozen base Linear layers run float8 matmuls (%s scales, torchao)", count, scaling)
    return count


def enable_configured_fp8_compute(model: nn.Module, device: torch.device | str, config, family) -> int:
    """:func:`enable_fp8_compute` as a config's ``fp8_compute_scaling`` and ``fp8_compute_layers``
    (``family``'s layer groups) say: the trainer's and the sampler's one call."""
    return enable_fp8_compute(model, device, scaling=config.fp8_compute_scaling, include=fp8_layer_filter(config.fp8_compute_layers, family))
