"""Attention dispatch for the LongCat-Video DiT.

All functions take and return ``[B, heads, S, head_dim]`` tensors (the layout of
``torch.nn.functional.scaled_dot_product_attention``); backends with another layout
transpose inside. The self-attention backend is chosen per model through
:class:`AttentionSettings`; block-sparse attention registers itself in
``SELF_ATTENTION_BACKENDS`` under ``"bsa"``.
"""

from __future__ import annotations

import contextlib

import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from ..sdpa import SDPA_KERNELS, eager_kernel_priority, kernel_priority, preferred_sdpa_kernel

logger = logging.getLogger(__name__)

ATTENTION_IMPLEMENTATIONS = ("auto", "sdpa", "xformers", "bsa")


class SelfAttentionBackend(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        grid_q: tuple[int, int, int],
        grid_k: tuple[int, int, int],
        settings: "AttentionSettings",
    ) -> torch.Tensor: ...


@dataclass
class AttentionSettings:
    """Which kernel runs self-attention; shared by every block of one model."""

    implementation: str = "auto"
    bsa_params: dict | None = None
    sdpa_kernel: str = "auto"  # which fused SDPA kernel dense attention prefers on CUDA
    _logged: set = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention_implementation={self.implementation!r} is not one of {list(ATTENTION_IMPLEMENTATIONS)}"
            )
        if self.sdpa_kernel not in SDPA_KERNELS:
            raise ValueError(f"sdpa_kernel={self.sdpa_kernel!r} is not one of {list(SDPA_KERNELS)}")

    def log_choice_once(self, backend: str, grid: tuple[int, int, int], reason: str = "") -> None:
        key = (backend, tuple(grid))
        if key not in self._logged:
            self._logged.add(key)
            logger.info("self-attention on grid %s uses %s%s", tuple(grid), backend, f" ({reason})" if reason else "")


# Hand the fused kernel q, k, v contiguous per head ([B, heads, N, D] in memory) instead of
# RoPE's [B, N, heads, D] output and v's strided view of the qkv projection. A module switch
# so bench/speed2.py can time both in one run (--qkv-layout).
SDPA_CONTIGUOUS_INPUTS = False


def _preferred_kernel(settings: "AttentionSettings | None", device: torch.device) -> str | None:
    """The fused SDPA kernel ``settings`` prefers on ``device`` (None: torch's own order)."""
    return preferred_sdpa_kernel(settings.sdpa_kernel if settings is not None else "auto", device)


def sdpa_priority(settings: "AttentionSettings | None", device: torch.device):
    """torch's SDPA priority set to the preferred kernel's, entered around the block loop
    (:func:`block_compile_context`), outside compiled code (``models/sdpa.py`` says why)."""
    return kernel_priority(_preferred_kernel(settings, device))


def _in_priority(settings: "AttentionSettings | None", device: torch.device):
    """The priority context for an eager call (the forward's and the checkpoint recomputation's
    alike, so both pick the same kernel); nothing while compiling (the block loop's holds)."""
    return eager_kernel_priority(_preferred_kernel(settings, device))


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, settings: "AttentionSettings | None" = None, **_: object) -> torch.Tensor:
    if SDPA_CONTIGUOUS_INPUTS and q.device.type == "cuda":
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    with _in_priority(settings, q.device):
        return F.scaled_dot_product_attention(q, k, v)


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **_: object) -> torch.Tensor:
    try:
        import xformers.ops as xops
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "attention_implementation='xformers' needs the xformers package: `pip install xformers` "
            "(CUDA only), or use attention_implementation='sdpa'"
        ) from error
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


SELF_ATTENTION_BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "sdpa": sdpa_attention,
    "xformers": xformers_attention,
}


def register_self_attention_backend(name: str, fn: Callable[..., torch.Tensor]) -> None:
    SELF_ATTENTION_BACKENDS[name] = fn


def _bsa_backend_available() -> bool:
    """Import the block-sparse backend on first need: FlexAttention stays out of DiT import."""
    if "bsa" not in SELF_ATTENTION_BACKENDS:
        try:
            from . import bsa  # noqa: F401  (registers itself)
        except ImportError as error:  # pragma: no cover - torch without FlexAttention
            logger.warning("block-sparse attention is unavailable (%s); using SDPA", error)
            return False
    return "bsa" in SELF_ATTENTION_BACKENDS


def resolve_backend(settings: AttentionSettings, device: torch.device, grid_q, grid_k) -> str:
    """Pick the backend for one call. ``auto`` uses block-sparse attention only where it applies."""
    wanted = settings.implementation
    if wanted == "auto":
        if device.type == "cuda" and settings.bsa_params and _bsa_backend_available():
            from .bsa import bsa_eligible

            if bsa_eligible(grid_q, grid_k, settings.bsa_params):
                return "bsa"
        return "sdpa"
    if wanted == "bsa":
        if not _bsa_backend_available():
            raise RuntimeError("attention_implementation='bsa' needs torch.nn.attention.flex_attention (torch >= 2.5)")
        from .bsa import require_bsa_eligible

        require_bsa_eligible(grid_q, grid_k, settings.bsa_params)
        return "bsa"
    if wanted not in SELF_ATTENTION_BACKENDS:
        raise RuntimeError(f"attention_implementation={wanted!r} is not available in this installation")
    return wanted


def block_compile_context(settings: AttentionSettings, device: torch.device):
    """Entered around the block loop: the SDPA kernel priority (:func:`sdpa_priority`), and
    FlexAttention's compile settings for compiled blocks that may use block-sparse attention
    (``bsa.block_compile_context``)."""
    stack = contextlib.ExitStack()
    stack.enter_context(sdpa_priority(settings, device))
    if settings.implementation in ("auto", "bsa") and settings.bsa_params and device.type == "cuda" and _bsa_backend_available():
        from .bsa import block_compile_context as bsa_context

        stack.enter_context(bsa_context(settings.bsa_params))
    return stack


def self_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid_q: tuple[int, int, int],
    grid_k: tuple[int, int, int],
    settings: AttentionSettings,
) -> torch.Tensor:
    backend = resolve_backend(settings, q.device, grid_q, grid_k)
    if not torch.compiler.is_compiling():
        # Inside a compiled, checkpointed block the set update is a side effect that
        # dynamo breaks the graph on; the model logs the choice before the block loop.
        settings.log_choice_once(backend, grid_k)
    return SELF_ATTENTION_BACKENDS[backend](q, k, v, grid_q=grid_q, grid_k=grid_k, settings=settings)


def cross_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor | None = None, settings: AttentionSettings | None = None
) -> torch.Tensor:
    """Attention of video tokens to text tokens; ``key_bias [B, L]`` is added to the logits
    of every query (``-inf`` drops a key, ``log m`` stands one key in for m identical ones)."""
    attn_mask = None if key_bias is None else key_bias[:, None, None, :].to(q.dtype)
    with _in_priority(settings, q.device):  # the kernel the block loop's priority picks, eager or compiled
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
