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

At 480x832 with 13 conditioning frames the cache of the 13.6B DiT is about 4.9 GB (bf16).
:meth:`ConditionCache.offloaded` keeps it in host memory instead (upstream's
``offload_kv_cache``): each block's keys/values are copied in just before the block runs,
about 0.1 GB per block and step.
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
    device: torch.device | None = None  # set when offloaded: where layer() brings a block's entry

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[index], self.values[index]
        if self.device is not None:
            keys, values = keys.to(self.device, non_blocking=True), values.to(self.device, non_blocking=True)
        return keys, values

    def offloaded(self) -> "ConditionCache":
        """This cache in (pinned, where CUDA is available) host memory; ``layer`` copies back on use."""
        device = self.keys[0].device if self.keys else torch.device("cpu")

        def host(tensor: torch.Tensor) -> torch.Tensor:
            tensor = tensor.to("cpu")
            return tensor.pin_memory() if torch.cuda.is_available() else tensor

        return ConditionCache(self.num_latents, self.grid, [host(k) for k in self.keys], [host(v) for v in self.values], device)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def to(self, device: torch.device | str) -> "ConditionCache":
        return ConditionCache(
            self.num_latents, self.grid, [k.to(device) for k in self.keys], [v.to(device) for v in self.values]
        )
