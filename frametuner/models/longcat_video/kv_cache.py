"""The key/value cache of clean conditioning frames (video continuation, upstream ``use_kv_cache``).

Condition tokens are clean (timestep 0), attend only among themselves and get no
cross-attention, so their hidden states are the same at every denoising step and for
both CFG branches. The DiT therefore runs them once per video
(:meth:`LongCatVideoTransformer3DModel.build_condition_cache`) and every step's forward
on the noisy frames reuses each block's keys and values: the maths of the forward over
all frames, without the condition tokens' queries, FFN and cross-attention at every step.

Keys are stored after the per-head RMSNorm AND RoPE (upstream stores them before RoPE and
rotates the concatenation each step; RoPE is per token, so the values are identical and
the rotation runs once instead of every step). One cache of batch 1 serves every sample
of a forward (the CFG batch ``[negative, positive]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ConditionCache:
    """Per-block keys and values ``[b, heads, K*h*w, head_dim]`` of ``num_latents`` condition frames."""

    num_latents: int  # K condition latent frames
    grid: tuple[int, int, int]  # their patch grid (K, h, w)
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[index], self.values[index]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def to(self, device: torch.device | str) -> "ConditionCache":
        return ConditionCache(
            self.num_latents, self.grid, [k.to(device) for k in self.keys], [v.to(device) for v in self.values]
        )
