"""Which fused kernel torch's ``scaled_dot_product_attention`` prefers: a fact of the GPU and
torch, not of a model, so every family's attention asks here.

On Hopper (sm90) cuDNN's attention runs a video DiT's ~37k-token self-attention at ~590
TFLOP/s forward against flash's ~370 (the ceilings every bench run measures,
bench/NOTES.md), but torch ranks cuDNN last by default. ``sdpa_kernel: auto`` therefore
prefers cuDNN there and leaves every other device to torch's own order.

The preference is a priority context (``sdpa_kernel(..., set_priority=True)``) entered
OUTSIDE compiled code, around a denoiser's block loop and around each eager call that may
run outside it (a checkpointed block's recomputation in the backward): inside a compiled
block the context manager becomes graph nodes that inductor's FX graph and AOTAutograd
caches cannot key (``_backend_from_string``), so every run compiled from scratch. A
compiled graph picks its kernel when it is traced, under the loop's priority.
"""

from __future__ import annotations

import contextlib

import torch

SDPA_KERNELS = ("auto", "flash", "cudnn", "efficient", "math")


def sdpa_backends(name: str):
    """The fused SDPA kernels of one ``sdpa_kernel`` name, first preferred (``set_priority``)."""
    from torch.nn.attention import SDPBackend

    return {
        "flash": [SDPBackend.FLASH_ATTENTION],
        # cuDNN first, then torch's own order for what cuDNN cannot serve.
        "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
        "math": [SDPBackend.MATH],
    }[name]


def auto_sdpa_kernel(device: torch.device) -> str | None:
    """What ``sdpa_kernel: auto`` prefers on ``device``: cuDNN on Hopper (sm90), torch's
    default order (flash first) elsewhere (None)."""
    if device.type != "cuda":
        return None
    return "cudnn" if torch.cuda.get_device_properties(device).major == 9 else None


def preferred_sdpa_kernel(kernel: str, device: torch.device) -> str | None:
    """The fused kernel ``kernel`` (one of ``SDPA_KERNELS``) prefers on ``device``; None:
    torch's own order (``auto`` off Hopper, and any choice off CUDA)."""
    if kernel not in SDPA_KERNELS:
        raise ValueError(f"sdpa_kernel={kernel!r} is not one of {list(SDPA_KERNELS)}")
    if kernel == "auto":
        kernel = auto_sdpa_kernel(device)
    return kernel if device.type == "cuda" else None


def kernel_priority(kernel: str | None):
    """torch's SDPA priority set to ``kernel``'s (a :func:`preferred_sdpa_kernel` answer), or
    nothing to do for None. Enter it outside compiled code (see the module docstring)."""
    if kernel is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(sdpa_backends(kernel), set_priority=True)


def eager_kernel_priority(kernel: str | None):
    """:func:`kernel_priority` for a call that may run eagerly (a forward, a checkpoint's
    recomputation) or be traced: nothing while compiling (the block loop's context holds)."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return kernel_priority(kernel)
