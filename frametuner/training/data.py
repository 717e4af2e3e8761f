"""What the training loop reads: batches of cached latents and text embeddings.

The loop only needs :class:`TrainingData`; the production implementation reads the
on-disk caches (``cache/``), tests use :class:`InMemoryData`.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol

import torch


class TrainingData(Protocol):
    """Epochs of batches (see the contract in ``frametuner/cache/__init__.py``), resumable mid-epoch."""

    def batches_per_epoch(self) -> int: ...

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        """Batches of ``epoch``, starting after the last batch handed out before ``state_dict()``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def empty_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedding and mask of the empty prompt (caption dropout): ``[n, C]`` real tokens or
        padded ``[L, C]``; the trainer keeps the masked-in rows and pads them to the batch."""


class InMemoryData:
    """Latents and text held in memory, one bucket; seeded shuffling per epoch.

    Like the bucket sampler, with ``num_replicas`` > 1 it forms global batches of
    ``batch_size * num_replicas`` and hands rank ``rank`` its slice.
    """

    def __init__(
        self,
        latents: list[torch.Tensor],
        texts: list[torch.Tensor],
        masks: list[torch.Tensor],
        *,
        batch_size: int = 1,
        seed: int = 0,
        num_cond_latents: int = 0,
        conditioning=None,
        empty: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.latents, self.texts, self.masks = latents, texts, masks
        self.batch_size = batch_size
        self.num_replicas, self.rank = num_replicas, rank
        self.seed = seed
        self.num_cond_latents = num_cond_latents
        self.conditioning = conditioning  # a ConditioningMix: a mode drawn per sample by the trainer
        self._empty = empty
        self._position = 0  # batches already handed out in the current epoch
        self._epoch = 0

    def batches_per_epoch(self) -> int:
        return len(self.latents) // (self.batch_size * self.num_replicas)

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        if epoch != self._epoch:
            self._epoch, self._position = epoch, 0
        order = torch.randperm(len(self.latents), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        size = self.batch_size * self.num_replicas
        while self._position < self.batches_per_epoch():
            start = self._position * size + self.rank * self.batch_size
            index = order[start : start + self.batch_size]
            self._position += 1
            yield {
                "latents": torch.stack([self.latents[i] for i in index]),
                "text": torch.stack([self.texts[i] for i in index]),
                "text_mask": torch.stack([self.masks[i] for i in index]),
                "num_cond_latents": self.num_cond_latents,
                "captions": [f"sample {i}" for i in index],
                **({"conditioning": self.conditioning} if self.conditioning is not None else {}),
            }
        self._epoch, self._position = epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch, self._position = state["epoch"], state["position"]

    def empty_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._empty is None:
            return torch.zeros_like(self.texts[0]), torch.zeros_like(self.masks[0])
        return self._empty
