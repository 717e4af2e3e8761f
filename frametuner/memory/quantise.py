"""Quantised frozen base weights: int8/int4 through optimum-quanto, float8 through torchao.

What is quantised: the plain ``nn.Linear`` layers inside the DiT blocks (attention,
cross-attention, FFN: 95% of the weights). Layers that compute in float32 on purpose
(``FP32Linear`` subclasses: adaLN modulation, timestep MLP, final projection), norms and
the embedders keep their dtype. Quantisation runs block by block, so a model that was
materialised in bf16 never needs a second full copy, and a checkpoint streamed in block
by block (:func:`frametuner.models.loading.load_blockwise`) never exists in bf16 at all.

LoRA goes on top afterwards: PEFT wraps a quanto ``QLinear`` (an ``nn.Linear``) with its
default LoRA layer and a torchao-quantised Linear with ``TorchaoLoraLinear``; both call
the quantised base layer and add the low-rank path in the LoRA weights' dtype.

Compute: quanto and torchao's weight-only float8 dequantise inside the matmul and compute
in the activation dtype (bf16). For sampling on GPUs with float8 tensor cores (sm89+),
``fp8-torchao`` quantises activations too and runs float8 matmuls (``torch._scaled_mm``);
training keeps weight-only float8, because float8 matmuls have no backward.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import time
from typing import Callable

import torch
import torch.nn as nn

from ..config.precision import QUANTISED_PRECISIONS
from .errors import MemoryOptionError

log = logging.getLogger(__name__)

QUANTO_WEIGHTS = {"int8-quanto": "qint8", "int4-quanto": "qint4"}
FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper: float8 tensor cores and torchao's float8 kernels


def is_quantisable(module: nn.Module, name: str = "") -> bool:
    """Plain Linear layers of the base only: subclasses (FP32Linear) compute in float32 on
    purpose, and LoRA layers (``lora_A``/``lora_B``, present when sampling) stay as they are."""
    return type(module) is nn.Linear and not any(part.startswith("lora_") for part in name.split("."))


def _installed(name: str) -> bool:
    """``find_spec`` that answers False instead of raising when the parent package (``optimum``) is absent."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_quantisation_supported(precision: str, device: torch.device | str) -> None:
    """Raise :class:`MemoryOptionError` with the fix when ``precision`` cannot run on ``device``."""
    device = torch.device(device)
    if precision not in QUANTISED_PRECISIONS:
        raise MemoryOptionError(f"base_model_precision {precision!r} is not a quantised precision ({', '.join(QUANTISED_PRECISIONS)})")
    if precision in QUANTO_WEIGHTS:
        if not _installed("optimum.quanto"):
            raise MemoryOptionError(f"base_model_precision {precision!r} needs optimum-quanto: pip install optimum-quanto (or frametuner[quant])")
        if device.type == "mps" and precision == "int4-quanto":
            raise MemoryOptionError("base_model_precision 'int4-quanto' has no Apple MPS kernels; use 'int8-quanto' on a Mac")
        if device.type == "cuda" and precision == "int4-quanto" and torch.cuda.get_device_capability(device) < (8, 0):
            name = torch.cuda.get_device_name(device)
            raise MemoryOptionError(f"base_model_precision 'int4-quanto' needs an Ampere or newer GPU (sm80+); {name} is not; use 'int8-quanto'")
        return
    # fp8-torchao
    if device.type != "cuda":
        raise MemoryOptionError(
            f"base_model_precision 'fp8-torchao' needs a CUDA GPU with float8 support (sm89+: RTX 40xx, L4, H100); "
            f"the model runs on {device}; use 'int8-quanto'"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise MemoryOptionError(
            f"base_model_precision 'fp8-torchao' needs float8 support (sm89+: RTX 40xx, L4, H100); "
            f"{name} is sm{capability[0]}{capability[1]}; use 'int8-quanto'"
        )
    if not _installed("torchao"):
        raise MemoryOptionError("base_model_precision 'fp8-torchao' needs torchao: pip install torchao (or frametuner[fp8])")


def prepare_quanto_kernels(precision: str, device: torch.device | str) -> None:
    """Make an int4 base's backward run on the GPU without compiling anything.

    quanto's int4 layers dequantise their weight in the backward through its op
    ``quanto::unpack``, whose CUDA kernel sits in an extension quanto compiles with nvcc and
    ninja on first use: minutes inside step 1 (its Marlin and AWQ kernels compile along,
    unused here), and a CUDA toolkit that most users of 24 GB cards never installed. The
    op is a few shifts and masks, so on torch >= 2.8 its CUDA dispatch is routed to
    :func:`unpack_with_torch_ops` (:func:`route_quanto_unpack_to_torch`, once per process).
    Older torch cannot replace a kernel registered from Python: there the extension is
    built here, at load, with a log line, or refused with what is missing.
    """
    if precision != "int4-quanto" or torch.device(device).type != "cuda":
        return
    if route_quanto_unpack_to_torch():
        return
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        raise MemoryOptionError(
            "training on an 'int4-quanto' base with torch < 2.8 needs optimum-quanto's CUDA kernels, compiled on first use "
            "with the CUDA toolkit (nvcc), which was not found: install it or set CUDA_HOME, upgrade torch, or use 'int8-quanto'"
        )
    if not cpp_extension.is_ninja_available():
        raise MemoryOptionError(
            "training on an 'int4-quanto' base with torch < 2.8 compiles optimum-quanto's CUDA kernels on first use, "
            "which needs ninja: pip install ninja (or upgrade torch)"
        )
    from optimum.quanto.library.extensions import get_extension, is_extension_available

    if not is_extension_available("quanto_cuda"):
        return  # quanto registered no CUDA kernels: its unpack runs in plain torch
    extension = get_extension("quanto_cuda")
    log.info("int4-quanto: loading optimum-quanto's CUDA kernels (compiled on first use after installing: a few minutes) in %s",
             extension.build_directory)
    started = time.perf_counter()
    extension.lib  # noqa: B018 (the property compiles and loads)
    log.info("int4-quanto: CUDA kernels ready after %.0f s", time.perf_counter() - started)


_unpack_routing: torch.library.Library | None = None  # kept alive: the registration lives as long as it


def unpack_with_torch_ops(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """quanto's packing undone: value ``i`` of each byte holds bits ``[bits*i, bits*(i+1))``,
    and the unpacked values are stacked along dim 0 in that order (as quanto's reference)."""
    mask = (1 << bits) - 1
    return torch.cat([(packed >> (bits * i)) & mask for i in range(8 // bits)]).to(torch.uint8)


def route_quanto_unpack_to_torch() -> bool:
    """Register :func:`unpack_with_torch_ops` as ``quanto::unpack``'s CUDA kernel, in place
    of the one in quanto's compiled extension; False where torch is too old (< 2.8) to
    replace a kernel registered from Python. Idempotent."""
    global _unpack_routing
    if _unpack_routing is not None:
        return True
    if "allow_override" not in inspect.signature(torch.library.Library.impl).parameters:
        return False
    import optimum.quanto.library.extensions  # noqa: F401 - quanto's own CUDA registration comes first, then ours

    library = torch.library.Library("quanto", "IMPL")
    library.impl("unpack", unpack_with_torch_ops, "CUDA", allow_override=True)
    _unpack_routing = library
    log.info("int4-quanto: quanto::unpack runs as torch ops on CUDA (no compiled extension needed)")
    return True


def staging_device(precision: str, device: torch.device, offloads: bool) -> torch.device:
    """Where freshly quantised blocks wait until block swap or group offload places them.

    Host memory normally, so the GPU never holds the whole base. Not for int4: quanto keeps
    int4 weights in a device-specific packing (tinygemm's CUDA and CPU layouts differ), and
    ``.to()`` from the CPU unpacks with an identity matmul there (7.7 s for one 11008x4096
    FFN layer on 2 cores: minutes for the 13.6B model) each time block swap stages a block.
    The int4 base (~7 GB) waits on the GPU, and block swap moves its bytes as they are.
    """
    if not offloads or precision == "int4-quanto":
        return device
    return torch.device("cpu")


def is_quantised(model: nn.Module) -> bool:
    """Whether any block Linear already holds quantised weights."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    return any(is_traceable_wrapper_subclass(p) for p in model.blocks.parameters())


def block_quantiser(precision: str, *, training: bool = True, device: torch.device | str = "cpu") -> Callable[[nn.Module], None]:
    """A function that quantises one block's plain Linear layers in place on ``device``
    (for training, with the kernels the backward will need ready: :func:`prepare_quanto_kernels`)."""
    if training:
        prepare_quanto_kernels(precision, device)
    if precision in QUANTO_WEIGHTS:
        from optimum.quanto import freeze, qint4, qint8, quantize

        weights = {"qint8": qint8, "qint4": qint4}[QUANTO_WEIGHTS[precision]]

        def quantise_quanto(block: nn.Module) -> None:
            names = [name for name, module in block.named_modules() if is_quantisable(module, name)]
            modules = dict(block.named_modules())
            attached = [name for name in names if modules[name]._forward_hooks or len(modules[name]._modules)]
            if attached:
                # quanto replaces each Linear with a new QLinear, dropping what hangs on the old one
                raise MemoryOptionError(
                    f"{attached[0]} carries hooks or sub-modules (an applied LoRA?) that {precision} quantisation "
                    "would drop; quantise the base first (memory.load_transformer does), then apply LoRAs"
                )
            if names:
                quantize(block, weights=weights, include=names)
                freeze(block)

        return quantise_quanto

    if precision == "fp8-torchao":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, PerRow, quantize_

        # Training differentiates through the frozen layer: weight-only (bf16 matmul).
        config = Float8WeightOnlyConfig() if training else Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())

        def quantise_torchao(block: nn.Module) -> None:
            quantize_(block, config, filter_fn=is_quantisable)

        return quantise_torchao
    raise MemoryOptionError(f"base_model_precision {precision!r} is not a quantised precision ({', '.join(QUANTISED_PRECISIONS)})")


def quantise_transformer(
    model: nn.Module,
    precision: str,
    *,
    device: torch.device | str | None = None,
    offload_to: torch.device | str | None = None,
    training: bool = True,
) -> nn.Module:
    """Quantise the DiT's block Linears in place, one block at a time; returns the model.

    ``device`` (default: where the blocks are) is where quantisation runs and where the
    quantised blocks stay, unless ``offload_to`` (host memory, when block swap or group
    offload will place them; see :func:`staging_device`) is given. A no-op for
    non-quantised precisions and for a model that is quantised already. Only frozen weights can be quantised: call it before
    adding LoRA.
    """
    if precision not in QUANTISED_PRECISIONS or is_quantised(model):
        return model
    device = torch.device(device) if device is not None else next(model.blocks.parameters()).device
    check_quantisation_supported(precision, device)
    quantise = block_quantiser(precision, training=training, device=device)
    before = _block_bytes(model)
    for block in model.blocks:
        if any(p.requires_grad for p in block.parameters()):
            raise MemoryOptionError(
                f"base_model_precision {precision!r} quantises frozen weights; quantise before adding LoRA, "
                "and use model_type 'lora' (a quantised base cannot be fully fine-tuned)"
            )
        block.to(device)
        quantise(block)
        if offload_to is not None:
            block.to(offload_to)
    log.info("quantised the DiT blocks to %s: %.2f -> %.2f GB", precision, before / 2**30, _block_bytes(model) / 2**30)
    return model


def _block_bytes(model: nn.Module) -> int:
    from .block_swap import storage_views

    return sum(view.numel() * view.element_size() for p in model.blocks.parameters() for view in storage_views(p))
