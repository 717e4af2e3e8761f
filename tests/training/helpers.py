"""Small builders for training tests: a tiny config and synthetic cached data."""

from __future__ import annotations

import torch

from frametuner.config import TrainConfig
from frametuner.training.data import InMemoryData


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        model_flavour="tiny",
        mixed_precision="no",
        report_to="none",
        output_dir=str(tmp_path / "out"),
        learning_rate=1e-3,
        max_train_steps=6,
        checkpointing_steps=1000,
        validation_steps=1000,
        seed=1,
        lora_rank=4,
    )
    values.update(overrides)
    return TrainConfig(**values)


def synthetic_data(n: int = 2, frames: int = 3, height: int = 4, width: int = 6, text_len: int = 8, channels: int = 64, seed: int = 0, **kwargs) -> InMemoryData:
    generator = torch.Generator().manual_seed(seed)
    latents = [torch.randn(16, frames, height, width, generator=generator) for _ in range(n)]
    texts = [torch.randn(text_len, channels, generator=generator) for _ in range(n)]
    masks = []
    for i in range(n):
        mask = torch.zeros(text_len, dtype=torch.int64)
        mask[: 3 + i % (text_len - 3)] = 1
        masks.append(mask)
        texts[i] = texts[i] * mask[:, None]
    return InMemoryData(latents, texts, masks, seed=seed, **kwargs)


def smooth_clip_data(channels: int = 64, seed: int = 0) -> InMemoryData:
    """One clip whose latents vary smoothly in t, h, w like real VAE latents (a memorisable target)."""
    g = torch.Generator().manual_seed(seed)
    base, slope = torch.randn(16, 1, 1, 1, generator=g), 0.5 * torch.randn(16, 1, 1, 1, generator=g)
    ramp = torch.linspace(-1, 1, 3)[:, None, None] + torch.linspace(-1, 1, 4)[None, :, None] + torch.linspace(-1, 1, 6)[None, None, :]
    text = torch.randn(8, channels, generator=g)
    return InMemoryData([base + slope * ramp], [text], [torch.ones(8, dtype=torch.int64)], seed=seed)
