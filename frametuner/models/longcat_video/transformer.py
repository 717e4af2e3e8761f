"""LongCat-Video diffusion transformer (13.6B at the released size), written for frametuner.

The module tree and parameter names equal the upstream checkpoint's state dict, so an
upstream ``dit/`` folder loads with ``from_pretrained`` as is. The maths follows the
upstream reference exactly (see ``docs`` and the fixture README): per-frame adaLN
computed in float32, float32 LayerNorm/RMSNorm/RoPE, SwiGLU FFN, cross-attention to
zero-padded text, and condition latents (image-to-video) that attend only to themselves
and get no cross-attention.

Memory tools (block swap, offload, FSDP) wrap entries of ``self.blocks``; the forward
runs them through :meth:`LongCatVideoTransformer3DModel._run_block`, the one seam where
checkpointing policies plug in.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .attention import AttentionSettings, block_compile_context, cross_attention, resolve_backend, self_attention
from .kv_cache import ConditionCache
from .rope import RotaryEmbedding3D, apply_rope

Grid = tuple[int, int, int]


class FP32Linear(nn.Linear):
    """A Linear that always computes in float32 (upstream runs these under fp32 autocast).

    Used for the timestep MLP, the adaLN modulation and the final projection, whose
    outputs scale every activation; storage may be bf16, the matmul is not.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast(device_type=x.device.type, enabled=False):  # bf16 autocast must not apply here
            return F.linear(x.float(), self.weight.float(), bias)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32; returns float32 (callers cast where upstream does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class FP32RMSNorm(nn.Module):
    """Per-head RMSNorm: normalised in float32, cast back, then scaled by the weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def swiglu_hidden_size(hidden_size: int, mlp_ratio: float, multiple_of: int = 256) -> int:
    """Upstream FFN width: 2/3 of ``hidden_size * mlp_ratio`` rounded up to a multiple of 256."""
    hidden = int(2 * int(hidden_size * mlp_ratio) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos(t f), sin(t f)]`` in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
    return features


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size: Sequence[int], in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=tuple(patch_size), stride=tuple(patch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, N, C], tokens in (t, h, w) order; contiguous so that every block input has the
        # same layout (compiled blocks specialise on strides; offloaded inputs keep them).
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


class TimestepEmbedder(nn.Module):
    def __init__(self, t_embed_dim: int, frequency_embedding_size: int):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            FP32Linear(frequency_embedding_size, t_embed_dim),
            nn.SiLU(),
            FP32Linear(t_embed_dim, t_embed_dim),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t, self.frequency_embedding_size))


class CaptionEmbedder(nn.Module):
    def __init__(self, in_channels: int, hidden_size: int):
        super().__init__()
        self.y_proj = nn.Sequential(
            nn.Linear(in_channels, hidden_size),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, settings: AttentionSettings):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = FP32RMSNorm(self.head_dim)
        self.k_norm = FP32RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)
        self.settings = settings

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        grid: Grid,
        num_cond_latents: int,
        cond_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_kv: bool = False,
    ):
        """Self-attention of the tokens of ``x`` (patch grid ``grid``).

        Without ``cond_kv`` the first ``num_cond_latents`` frames of ``x`` are condition
        frames (all of them: every token attends only among ``x``). With ``cond_kv`` (the
        cached keys/values of ``num_cond_latents`` condition frames, RoPE applied) ``x``
        holds only the noisy frames, whose ``rope`` rows continue after the condition's;
        they attend to the cached tokens and to themselves. ``return_kv`` also returns
        this call's keys (after RMSNorm and RoPE) and values.
        """
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, D]
        cos, sin = rope
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)

        if cond_kv is not None:
            # One cache serves every sample (both CFG branches): broadcast it to the batch.
            cached_k, cached_v = (_batch_cache(t, batch) for t in cond_kv)
            full_grid = (grid[0] + num_cond_latents, grid[1], grid[2])
            out = self_attention(
                q, torch.cat([cached_k, k], dim=2), torch.cat([cached_v, v], dim=2),
                grid_q=grid, grid_k=full_grid, settings=self.settings,
            )
        elif 0 < num_cond_latents < grid[0]:
            # Condition tokens attend only to condition tokens; noise tokens attend to all.
            split = num_cond_latents * (tokens // grid[0])
            cond_grid = (num_cond_latents, grid[1], grid[2])
            noise_grid = (grid[0] - num_cond_latents, grid[1], grid[2])
            out_cond = self_attention(
                q[:, :, :split], k[:, :, :split], v[:, :, :split],
                grid_q=cond_grid, grid_k=cond_grid, settings=self.settings,
            )
            out_noise = self_attention(
                q[:, :, split:], k, v, grid_q=noise_grid, grid_k=grid, settings=self.settings
            )
            out = torch.cat([out_cond, out_noise], dim=2)
        else:
            out = self_attention(q, k, v, grid_q=grid, grid_k=grid, settings=self.settings)
        out = self.proj(out.transpose(1, 2).reshape(batch, tokens, channels))
        if not return_kv:
            return out
        # v is a view into the fused qkv output: a compact copy, or the cache would keep q and k
        # of every block alive too (3x its size). k is already a fresh tensor (RoPE's output).
        return out, k, v.contiguous()


def _batch_cache(cached: torch.Tensor, batch: int) -> torch.Tensor:
    """Cached ``[b, heads, N, D]`` for a batch of ``batch`` = copies x b (CFG stacks copies)."""
    if cached.shape[0] == batch:
        return cached
    if cached.shape[0] == 1:
        return cached.expand(batch, -1, -1, -1)
    if batch % cached.shape[0]:
        raise ValueError(f"a condition cache of batch {cached.shape[0]} cannot serve a batch of {batch}")
    return cached.repeat(batch // cached.shape[0], 1, 1, 1)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, settings: AttentionSettings | None = None):
        super().__init__()
        self.settings = settings
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = FP32RMSNorm(self.head_dim)
        self.k_norm = FP32RMSNorm(self.head_dim)

    def _attend(self, x: torch.Tensor, text: torch.Tensor, text_bias: torch.Tensor | None) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q = self.q_norm(self.q_linear(x).view(batch, tokens, self.num_heads, self.head_dim))
        kv = self.kv_linear(text).view(batch, -1, 2, self.num_heads, self.head_dim)
        k, v = kv.unbind(2)
        k = self.k_norm(k)
        out = cross_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), key_bias=text_bias, settings=self.settings)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, channels))

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_bias: torch.Tensor | None, grid: Grid, num_cond_latents: int) -> torch.Tensor:
        if num_cond_latents == 0:
            return self._attend(x, text, text_bias)
        split = num_cond_latents * (x.shape[1] // grid[0])
        out_noise = self._attend(x[:, split:], text, text_bias)
        return torch.cat([out_noise.new_zeros(x.shape[0], split, x.shape[2]), out_noise], dim=1)


class FeedForwardSwiGLU(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def _modulate(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``LN(x) * (1 + scale) + shift`` in float32, per latent frame; ``x [B, T, n, C]``."""
    return (norm(x) * (1 + scale) + shift).to(x.dtype)


def _save_attention_policy(ctx, op, *args, **kwargs):
    """Selective checkpointing: keep attention outputs, recompute everything else."""
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_ATTENTION_OPS = {
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}

CHECKPOINT_POLICIES = ("none", "full", "save_attention")


class LongCatSingleStreamBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, adaln_tembed_dim: int, settings: AttentionSettings):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), FP32Linear(adaln_tembed_dim, 6 * hidden_size))
        self.mod_norm_attn = FP32LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mod_norm_ffn = FP32LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.pre_crs_attn_norm = FP32LayerNorm(hidden_size, eps=1e-6, elementwise_affine=True)
        self.attn = SelfAttention(hidden_size, num_heads, settings)
        self.cross_attn = CrossAttention(hidden_size, num_heads, settings)
        self.ffn = FeedForwardSwiGLU(hidden_size, swiglu_hidden_size(hidden_size, mlp_ratio))
        self.checkpoint_policy = "none"  # set by LongCatVideoTransformer3DModel.enable_gradient_checkpointing

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor | None,
        text_bias: torch.Tensor | None,
        t_emb: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        grid: Grid,
        num_cond_latents: int = 0,
        cond_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_kv: bool = False,
    ):
        """One block. ``cond_kv``/``return_kv``: see :class:`SelfAttention`. When every frame
        of ``x`` is a condition frame (``num_cond_latents == grid[0]``, building a
        :class:`ConditionCache`) cross-attention is skipped and ``text`` may be None."""
        args = (x, text, text_bias, t_emb, rope, grid, num_cond_latents, cond_kv, return_kv)
        if self.checkpoint_policy == "none" or not torch.is_grad_enabled():
            return self._forward(*args)
        # Checkpointing inside the block's own forward keeps the module tree intact and lets
        # torch.compile of the block see (and fuse) the recomputation.
        from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

        context_fn = None
        if self.checkpoint_policy == "save_attention":
            context_fn = functools.partial(create_selective_checkpoint_contexts, _save_attention_policy)
        kwargs = {"context_fn": context_fn} if context_fn is not None else {}
        return checkpoint(self._forward, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)

    def _forward(self, x, text, text_bias, t_emb, rope, grid, num_cond_latents, cond_kv=None, return_kv=False):
        batch, tokens, channels = x.shape
        frames = grid[0]
        # [B, T, 1, C] each, float32
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(t_emb).unsqueeze(2).chunk(6, dim=-1)
        )
        per_frame = (batch, frames, tokens // frames, channels)

        x_mod = _modulate(self.mod_norm_attn, x.view(per_frame), shift_msa, scale_msa).view(batch, tokens, channels)
        attn = self.attn(x_mod, rope, grid, num_cond_latents, cond_kv, return_kv)
        if return_kv:
            attn, keys, values = attn
        x = (x.view(per_frame).float() + gate_msa * attn.view(per_frame).float()).to(x.dtype).view(batch, tokens, channels)

        # Condition frames inside x (with a cache, x holds only noisy frames) get no
        # cross-attention; when x is all condition, the zero output is skipped.
        cond_in_x = 0 if cond_kv is not None else num_cond_latents
        if cond_in_x < frames:
            x = x + self.cross_attn(self.pre_crs_attn_norm(x).to(x.dtype), text, text_bias, grid, cond_in_x)

        x_mod = _modulate(self.mod_norm_ffn, x.view(per_frame), shift_mlp, scale_mlp).view(batch, tokens, channels)
        ffn = self.ffn(x_mod)
        x = (x.view(per_frame).float() + gate_mlp * ffn.view(per_frame).float()).to(x.dtype)
        x = x.view(batch, tokens, channels)
        return (x, keys, values) if return_kv else x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int, adaln_tembed_dim: int):
        super().__init__()
        self.norm_final = FP32LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.linear = FP32Linear(hidden_size, patch_volume * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), FP32Linear(adaln_tembed_dim, 2 * hidden_size))

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, grid: Grid) -> torch.Tensor:
        batch, tokens, channels = x.shape
        shift, scale = self.adaLN_modulation(t_emb).unsqueeze(2).chunk(2, dim=-1)
        x = x.view(batch, grid[0], tokens // grid[0], channels)
        x = self.norm_final(x) * (1 + scale) + shift  # stays float32, as upstream
        return self.linear(x.view(batch, tokens, channels))


class LongCatVideoTransformer3DModel(ModelMixin, ConfigMixin):
    """The LongCat-Video DiT. Constructor arguments equal the upstream ``dit/config.json`` keys.

    ``enable_flashattn2/3``, ``enable_xformers`` and ``cp_split_hw`` only described how
    upstream ran and are accepted for compatibility; the kernel is chosen with
    :meth:`set_attention_implementation`. ``enable_bsa`` + ``bsa_params`` make
    block-sparse attention available to the ``auto`` choice.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["LongCatSingleStreamBlock"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int = 16,
        hidden_size: int = 4096,
        depth: int = 48,
        num_heads: int = 32,
        caption_channels: int = 4096,
        mlp_ratio: int = 4,
        adaln_tembed_dim: int = 512,
        frequency_embedding_size: int = 256,
        patch_size: Sequence[int] = (1, 2, 2),
        enable_flashattn3: bool = False,
        enable_flashattn2: bool = False,
        enable_xformers: bool = False,
        enable_bsa: bool = False,
        bsa_params: dict | None = None,
        cp_split_hw: Sequence[int] | None = None,
        text_tokens_zero_pad: bool = False,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if tuple(patch_size)[0] != 1:
            raise ValueError("LongCat-Video patches must not compress time (patch_size[0] == 1)")
        self.patch_size = tuple(patch_size)
        self.out_channels = out_channels
        self.text_tokens_zero_pad = text_tokens_zero_pad
        self.attention_settings = AttentionSettings(
            implementation="auto", bsa_params=dict(bsa_params) if (enable_bsa and bsa_params) else None
        )

        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(adaln_tembed_dim, frequency_embedding_size)
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size)
        self.blocks = nn.ModuleList(
            LongCatSingleStreamBlock(hidden_size, num_heads, mlp_ratio, adaln_tembed_dim, self.attention_settings)
            for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size), out_channels, adaln_tembed_dim)
        self.rope = RotaryEmbedding3D(hidden_size // num_heads)
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ settings
    def set_attention_implementation(self, implementation: str, bsa_params: dict | None = None) -> None:
        """Choose the self-attention kernel: ``auto`` | ``sdpa`` | ``xformers`` | ``bsa``."""
        settings = AttentionSettings(implementation=implementation)  # validates the name
        self.attention_settings.implementation = settings.implementation
        if bsa_params is not None:
            self.attention_settings.bsa_params = dict(bsa_params)
        self.attention_settings._logged.clear()

    # ------------------------------------------------------------------ performance
    def enable_gradient_checkpointing(self, policy: str = "full", budget_bytes: int | None = None) -> None:
        """Recompute blocks in the backward: ``full`` (everything), ``save_attention`` (keep
        attention outputs, ~0.3 GB per block at 480p, recompute the rest) or ``auto``
        (save them in as many blocks as ``budget_bytes`` of peak GPU memory allows; on a
        CPU ``auto`` means ``full``)."""
        if policy not in CHECKPOINT_POLICIES + ("auto",):
            raise ValueError(f"checkpointing policy {policy!r} is not one of {CHECKPOINT_POLICIES + ('auto',)}")
        if policy == "auto" and not budget_bytes:
            raise ValueError("the auto checkpointing policy needs a memory budget (budget_bytes)")
        self.gradient_checkpointing = policy != "none"
        self._checkpoint_mode = policy
        self._activation_budget = budget_bytes
        for block in self.blocks:
            block.checkpoint_policy = "full" if policy == "auto" else policy

    _checkpoint_mode = "none"
    _activation_budget: int | None = None

    def _plan_checkpointing(self, x: torch.Tensor) -> int:
        """``auto``: how many blocks (the first ones) keep their attention outputs.

        Measured, not guessed: the first training step at a new shape runs with full
        recomputation and records its peak GPU memory; from the next step on, the spare
        room under the budget is filled with blocks that keep their attention output
        (one activation, B x N x C, each). Reads the allocator's host-side counters only
        (no device sync); whoever resets the peak counters between the first and second
        step at a shape (a profiler) makes this plan from the wrong peak."""
        if self._checkpoint_mode != "auto" or not torch.is_grad_enabled() or x.device.type != "cuda":
            return 0
        plans = self.__dict__.setdefault("_checkpoint_plans", {})
        key = tuple(x.shape)
        plan = plans.get(key)
        if plan is None:  # first step at this shape: measure the full-recompute peak
            plans[key] = "measuring"
            torch.cuda.reset_peak_memory_stats(x.device)
            saving = 0
        elif plan == "measuring":
            peak = torch.cuda.max_memory_allocated(x.device)
            # Measured on an H100 at 480x832x93: each block kept under save_attention costs
            # about 1.6 activations once compiled (the attention output plus what the
            # partitioner keeps beside it); budget 2 to stay clear of the limit.
            per_block = 2 * x.numel() * x.element_size()
            saving = max(0, min(len(self.blocks), int((self._activation_budget - peak) // per_block)))
            plans[key] = saving
        else:
            saving = plan
        for index, block in enumerate(self.blocks):
            block.checkpoint_policy = "save_attention" if index < saving else "full"
        return saving

    def disable_gradient_checkpointing(self) -> None:
        self.enable_gradient_checkpointing("none")

    def compile_blocks(self, **compile_kwargs: Any) -> None:
        """Regional compilation: every block compiles to the same code (compiled once per
        shape), fusing the float32 norm/modulation/gate chains and RoPE."""
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for block in self.blocks:
            block.compile(**compile_kwargs)

    # ------------------------------------------------------------------ helpers
    text_virtual_length: int | None = None
    """With ``text_tokens_zero_pad``, the padded length the weights expect (512 for the
    release). Callers may then pass text padded only to ``max(valid) + 1``: the identical
    padding rows are represented by one key carrying a log-multiplicity bias, which is
    exactly softmax over the full padded length, at a fraction of the cost."""

    def _text_inputs(self, encoder_hidden_states: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype):
        """Projected text ``[B, L, C]`` and an additive key bias ``[B, L]`` (or None)."""
        if encoder_hidden_states.dim() == 4:  # upstream layout [B, 1, L, C]
            encoder_hidden_states = encoder_hidden_states.squeeze(1)
        states = self.y_embedder(encoder_hidden_states.to(dtype))
        if mask is None:
            return states, None
        mask = mask.reshape(mask.shape[0], -1)
        if not self.text_tokens_zero_pad:
            bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
            return states, bias.masked_fill(mask == 0, float("-inf"))
        # Padding rows become exactly zero AFTER the projection; all of them are attended.
        states = states * mask[:, :, None].to(states.dtype)
        length = mask.shape[1]
        virtual = self.text_virtual_length
        if virtual is None or virtual == length:
            return states, None
        if virtual < length:
            raise ValueError(f"text has {length} tokens, more than text_virtual_length={virtual}")
        # Rows at index >= valid count are identical (keys RMSNorm(bias), values bias): keep the
        # first one with bias log(#padding rows of the virtual length), drop the others. One
        # zero row is appended so that a sample with no padding in the given length has one.
        states = F.pad(states, (0, 0, 0, 1))
        mask = F.pad(mask, (0, 1))
        length += 1
        valid = (mask != 0).sum(dim=1, keepdim=True)
        position = torch.arange(length, device=mask.device)[None, :]
        padding_rows = (virtual - valid).float()
        bias = torch.where(position == valid, padding_rows.log(), torch.zeros((), device=mask.device))
        bias = bias.masked_fill(position > valid, float("-inf"))
        return states, bias

    def _log_attention_choice(self, device: torch.device, grid: Grid, num_cond_latents: int) -> None:
        """Log the self-attention kernel once per shape, outside the (compiled) blocks."""
        if num_cond_latents:
            return  # the condition/noise split picks per part: eager blocks log it, compiled ones do not
        try:
            backend = resolve_backend(self.attention_settings, device, grid, grid)
        except (RuntimeError, ValueError):
            return  # the block raises it with the full message
        self.attention_settings.log_choice_once(backend, grid)

    def _run_block(self, index: int, block: nn.Module, *args: Any) -> torch.Tensor:
        """The seam memory tools hook into (block swap, offload); checkpointing is per block."""
        return block(*args)

    def unpatchify(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``[B, N, p_t*p_h*p_w*C]`` -> ``[B, C, T, H, W]`` with C fastest in the last dim."""
        num_t, num_h, num_w = grid
        p_t, p_h, p_w = self.patch_size
        batch = x.shape[0]
        x = x.view(batch, num_t, num_h, num_w, p_t, p_h, p_w, self.out_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(batch, self.out_channels, num_t * p_t, num_h * p_h, num_w * p_w)

    # ------------------------------------------------------------------ forward
    def _patch_grid(self, hidden_states: torch.Tensor) -> Grid:
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.patch_size
        if height % p_h or width % p_w:
            raise ValueError(f"latent height/width {height}x{width} must be multiples of the patch size {self.patch_size}")
        return (frames // p_t, height // p_h, width // p_w)

    def _timestep_embedding(self, timestep: torch.Tensor, batch: int, frames: int, dtype: torch.dtype) -> torch.Tensor:
        if timestep.dim() == 1:
            timestep = timestep[:, None].expand(-1, frames)
        # Upstream rounds timesteps to the model dtype before embedding; the released
        # weights were trained that way, so keep it.
        return self.t_embedder(timestep.to(dtype).float().flatten()).view(batch, frames, -1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        num_cond_latents: int = 0,
        condition_cache: ConditionCache | None = None,
    ) -> torch.Tensor:
        """Predict ``x0 - noise`` for latents ``[B, 16, T, H, W]``; returns float32.

        ``timestep`` is ``[B]`` or per latent frame ``[B, T]`` (sigma * 1000); text is
        ``[B, 1, L, C]`` or ``[B, L, C]`` with mask ``[B, L]`` (1 = real token).
        ``num_cond_latents``: the first frames are clean conditions (timestep 0 is the
        caller's to give). With ``condition_cache`` (from :meth:`build_condition_cache`)
        ``hidden_states`` holds only the noisy frames that follow the cached condition
        frames (``num_cond_latents`` is then 0 or the cache's), and the output covers them.
        """
        batch = hidden_states.shape[0]
        grid = self._patch_grid(hidden_states)
        num_cond_latents = int(num_cond_latents)
        if condition_cache is not None:
            if num_cond_latents not in (0, condition_cache.num_latents):
                raise ValueError(f"num_cond_latents={num_cond_latents} but the condition cache holds {condition_cache.num_latents} frames")
            if tuple(condition_cache.grid[1:]) != grid[1:]:
                raise ValueError(f"the condition cache was built on patch grid {condition_cache.grid}, the latents have {grid}")
            num_cond_latents = condition_cache.num_latents
        elif not 0 <= num_cond_latents < grid[0]:
            raise ValueError(f"num_cond_latents={num_cond_latents} must be in [0, {grid[0]})")

        dtype = self.x_embedder.proj.weight.dtype
        t_emb = self._timestep_embedding(timestep, batch, grid[0], dtype)
        x = self.x_embedder(hidden_states.to(dtype))
        text, text_bias = self._text_inputs(encoder_hidden_states, encoder_attention_mask, dtype)
        if condition_cache is None:
            rope = self.rope.tables(grid, x.device)
        else:  # the noisy frames' positions continue after the condition frames'
            cos, sin = self.rope.tables((grid[0] + num_cond_latents, grid[1], grid[2]), x.device)
            skip = num_cond_latents * grid[1] * grid[2]
            rope = (cos[skip:], sin[skip:])
        self._plan_checkpointing(x)

        self._log_attention_choice(x.device, grid, num_cond_latents)
        with block_compile_context(self.attention_settings, x.device):
            for index, block in enumerate(self.blocks):
                if condition_cache is None:
                    x = self._run_block(index, block, x, text, text_bias, t_emb, rope, grid, num_cond_latents)
                else:
                    cached = condition_cache.layer(index)
                    x = self._run_block(index, block, x, text, text_bias, t_emb, rope, grid, num_cond_latents, cached)

        x = self.final_layer(x, t_emb, grid)
        return self.unpatchify(x, grid).float()

    @torch.no_grad()
    def build_condition_cache(self, cond_latents: torch.Tensor, *, return_output: bool = False):
        """Run the clean condition latents ``[b, 16, K, H, W]`` once and keep every block's keys/values.

        The condition tokens are treated exactly as in a forward over all frames: timestep 0,
        self-attention among themselves, no cross-attention (so no text is needed). Returns
        a :class:`ConditionCache` (and, with ``return_output``, the DiT output on the
        condition frames, which sampling does not need). Inference only.
        """
        batch = cond_latents.shape[0]
        grid = self._patch_grid(cond_latents)
        dtype = self.x_embedder.proj.weight.dtype
        timestep = torch.zeros(batch, grid[0], device=cond_latents.device)
        t_emb = self._timestep_embedding(timestep, batch, grid[0], dtype)
        x = self.x_embedder(cond_latents.to(dtype))
        rope = self.rope.tables(grid, x.device)
        keys, values = [], []
        with block_compile_context(self.attention_settings, x.device):
            for index, block in enumerate(self.blocks):
                # Every frame is a condition frame: no text, attention among themselves only.
                x, k, v = self._run_block(index, block, x, None, None, t_emb, rope, grid, grid[0], None, True)
                keys.append(k)
                values.append(v)
        cache = ConditionCache(grid[0], grid, keys, values)
        if not return_output:
            return cache
        return cache, self.unpatchify(self.final_layer(x, t_emb, grid), grid).float()
