"""The one in-memory form every LoRA format converts through.

A layer's LoRA is ``delta W = scale * up @ down`` with ``down [rank, in]`` and
``up [out, rank]``: PEFT's own parametrisation (``lora_A = down``, ``lora_B = up``,
``scale = alpha / rank``). Formats that give a fused layer (``attn.qkv``) one down chunk
per output part (upstream's files) become a block-diagonal ``up``; formats that split a
fused layer into separate Linears (ComfyUI's q/k/v) are joined back. Both directions
are exact: no tensor value is recomputed, only sliced, stacked or zero-padded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch


@dataclass(frozen=True)
class SourceTensor:
    """A file tensor a delta was read from, for errors that name the offending key."""

    key: str
    shape: tuple[int, ...]
    role: str  # "down" ([rank, in]) or "up" ([out / parts, rank])
    parts: int = 1  # how many such up tensors share the layer's output rows


@dataclass
class LowRankDelta:
    """One Linear layer's LoRA: ``delta W = scale * up @ down``."""

    down: torch.Tensor  # [rank, in]
    up: torch.Tensor  # [out, rank]
    scale: float  # alpha / rank; upstream's ``alpha_scale``
    sources: tuple[SourceTensor, ...] = ()

    def __post_init__(self) -> None:
        if self.down.dim() != 2 or self.up.dim() != 2 or self.up.shape[1] != self.down.shape[0]:
            raise ValueError(
                f"LoRA down {tuple(self.down.shape)} and up {tuple(self.up.shape)} do not chain "
                "(expected down [rank, in] and up [out, rank])"
            )

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def in_features(self) -> int:
        return self.down.shape[1]

    @property
    def out_features(self) -> int:
        return self.up.shape[0]

    def weight(self) -> torch.Tensor:
        """The dense ``[out, in]`` update in float32 (tests and merging)."""
        return self.scale * (self.up.float() @ self.down.float())

    def block_diagonal(self, parts: int) -> bool:
        """True when output part ``i`` only reads rank chunk ``i`` (``parts`` equal chunks).

        That is the shape upstream's per-part down chunks take here; it lets them be
        written back with ``rank / parts`` per part instead of the full rank.
        """
        if parts < 2 or self.rank % parts or self.out_features % parts:
            return False
        blocks = self.up.reshape(parts, self.out_features // parts, parts, self.rank // parts)
        linked = blocks.abs().amax(dim=(1, 3)) != 0  # [out part, rank chunk]
        # An all-zero up (a fresh LoRA) is read as shared, keeping its rank.
        return bool(linked.any()) and not (linked & ~torch.eye(parts, dtype=torch.bool, device=linked.device)).any().item()

    def split(self, parts: int) -> list["LowRankDelta"]:
        """Exactly ``parts`` deltas, one per equal slice of the output rows.

        Block-diagonal: part ``i`` gets down chunk ``i`` and its diagonal block of up.
        Otherwise each part shares the whole down (copied) and gets its rows of up.
        """
        if parts == 1:
            return [self]
        if self.out_features % parts:
            raise ValueError(f"cannot split {self.out_features} output rows into {parts} equal parts")
        rows = self.up.chunk(parts, dim=0)
        if self.block_diagonal(parts):
            downs = self.down.chunk(parts, dim=0)
            ups = [part_rows.chunk(parts, dim=1)[i] for i, part_rows in enumerate(rows)]
        else:
            downs = [self.down] * parts
            ups = list(rows)
        return [LowRankDelta(d.contiguous(), u.contiguous(), self.scale) for d, u in zip(downs, ups)]

    @staticmethod
    def join(parts: Sequence["LowRankDelta | None"], part_out_features: int) -> "LowRankDelta":
        """Inverse of :meth:`split`: one delta whose output rows are the parts' in order.

        Parts with the same down and scale share it (rank r); otherwise the result is
        block-diagonal (rank = sum of the parts' ranks, a missing part adds nothing), and
        parts whose scale differs from the first's carry the ratio in their up.
        """
        present = [p for p in parts if p is not None]
        if not present:
            raise ValueError("cannot join zero LoRA parts")
        first = present[0]
        if len(present) == len(parts) and all(
            p.scale == first.scale and p.down.shape == first.down.shape and torch.equal(p.down, first.down)
            for p in present
        ):
            return LowRankDelta(first.down, torch.cat([p.up for p in present], dim=0), first.scale)
        down = torch.cat([p.down for p in present], dim=0)
        up = first.up.new_zeros(part_out_features * len(parts), down.shape[0])
        column = 0
        for index, part in enumerate(parts):
            if part is None:
                continue
            block = part.up if part.scale == first.scale else part.up * (part.scale / first.scale)
            up[index * part_out_features : (index + 1) * part_out_features, column : column + part.rank] = block
            column += part.rank
        return LowRankDelta(down, up, first.scale)

    def padded(self, rank: int) -> "LowRankDelta":
        """The same update at a higher rank (zero rows of down, zero columns of up)."""
        extra = rank - self.rank
        if extra < 0:
            raise ValueError(f"cannot pad a rank-{self.rank} LoRA down to rank {rank}")
        if extra == 0:
            return self
        return replace(
            self,
            down=torch.cat([self.down, self.down.new_zeros(extra, self.in_features)], dim=0),
            up=torch.cat([self.up, self.up.new_zeros(self.out_features, extra)], dim=1),
        )

    def to(self, dtype: torch.dtype | None = None) -> "LowRankDelta":
        if dtype is None:
            return self
        return replace(self, down=self.down.to(dtype), up=self.up.to(dtype))


@dataclass
class LoraWeights:
    """A whole LoRA: one delta per frametuner module name, plus free-form string metadata."""

    deltas: dict[str, LowRankDelta]
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = ""  # the file format it was read from, "" if built in memory

    def to(self, dtype: torch.dtype | None) -> "LoraWeights":
        return replace(self, deltas={name: delta.to(dtype) for name, delta in self.deltas.items()})

    def ranks(self) -> set[int]:
        return {delta.rank for delta in self.deltas.values()}
