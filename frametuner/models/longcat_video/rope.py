"""3D rotary position embedding of LongCat-Video (float32 tables, no float64 anywhere).

The head dimension is split into a time part and two spatial parts
(``t = D - 4 * (D // 6)``, ``h = w = 2 * (D // 6)``; 44/42/42 for D = 128). Inside each
part, frequency ``i`` is ``10000 ** (-2i / part_dim)`` and is used for the adjacent
channel pair ``(2i, 2i + 1)``; the angle is the integer grid position times the
frequency. Tokens are ordered t, then h, then w.
"""

from __future__ import annotations

import torch

ROPE_BASE = 10000.0


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channel counts of the (t, h, w) parts of one head."""
    if head_dim % 8 != 0:
        raise ValueError(f"3D RoPE needs head_dim divisible by 8, got {head_dim}")
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _axis_angles(length: int, dim: int, device: torch.device | None) -> torch.Tensor:
    """[length, dim] angles for one axis, each frequency repeated for its channel pair."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=device)[: dim // 2] / dim
    freqs = 1.0 / (ROPE_BASE**exponents)
    positions = torch.arange(length, dtype=torch.float32, device=device)
    return torch.outer(positions, freqs).repeat_interleave(2, dim=-1)


def rope_angles(grid: tuple[int, int, int], head_dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Angle table ``[T*H*W, head_dim]`` (position x frequency) for a patch grid (T, H, W)."""
    num_t, num_h, num_w = grid
    dim_t, dim_h, dim_w = rope_split(head_dim)
    angles_t = _axis_angles(num_t, dim_t, device)[:, None, None, :].expand(num_t, num_h, num_w, dim_t)
    angles_h = _axis_angles(num_h, dim_h, device)[None, :, None, :].expand(num_t, num_h, num_w, dim_h)
    angles_w = _axis_angles(num_w, dim_w, device)[None, None, :, :].expand(num_t, num_h, num_w, dim_w)
    return torch.cat([angles_t, angles_h, angles_w], dim=-1).reshape(num_t * num_h * num_w, head_dim)


class RotaryEmbedding3D:
    """Caches cos/sin tables per (grid, device); not a module, so nothing lands in the state dict."""

    def __init__(self, head_dim: int):
        self.head_dim = head_dim
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(grid), str(device))
        cached = self._tables.get(key)
        if cached is None:
            angles = rope_angles(grid, self.head_dim, device=device)
            cached = (angles.cos(), angles.sin())
            self._tables[key] = cached
        return cached


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1) -> (-x1, x0) on adjacent channel pairs."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, heads, N, D]`` in float32 and cast back to its dtype."""
    x32 = x.float()
    return (x32 * cos + rotate_interleaved(x32) * sin).to(x.dtype)
