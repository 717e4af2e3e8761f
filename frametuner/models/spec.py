"""The interface every model family implements; trainer and sampler only talk to this.

A ``ModelSpec`` knows the family's facts (strides, shift, bucket grid, LoRA targets,
folders of its checkpoint) and how to load each component. Nothing outside
``models/<family>/`` tests which family it is running.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class LatentGeometry:
    """How pixels map to latents and tokens."""

    channels: int
    vae_stride: tuple[int, int, int]  # (t, h, w)
    patch_size: tuple[int, int, int]

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.vae_stride[0]

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (self.channels, self.latent_frames(frames), height // self.vae_stride[1], width // self.vae_stride[2])

    def num_tokens(self, frames: int, height: int, width: int) -> int:
        _, t, h, w = self.latent_shape(frames, height, width)
        return (t // self.patch_size[0]) * (h // self.patch_size[1]) * (w // self.patch_size[2])

    @property
    def pixel_multiple(self) -> int:
        """Height and width must be multiples of this (VAE stride x patch)."""
        return self.vae_stride[1] * self.patch_size[1]


class ModelSpec(ABC):
    family: str
    geometry: LatentGeometry
    flow_shift: float
    bucket_alignment: int
    default_fps: int
    text_max_length: int
    default_lora_targets: tuple[str, ...]
    optional_lora_targets: tuple[str, ...] = ()

    @abstractmethod
    def checkpoint_root(self, flavour: str, pretrained_model_name_or_path: str | None) -> str | Path:
        """Local folder (or hub id) holding the family's checkpoint layout."""

    @abstractmethod
    def load_transformer(self, root: str | Path, *, dtype: torch.dtype, device: str | torch.device = "cpu") -> Any:
        """The denoiser, loaded shard by shard and cast while loading."""

    @abstractmethod
    def build_transformer(self, *, flavour: str = "final", device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16) -> Any:
        """The denoiser for a flavour with random weights (for benchmarks and tests)."""

    def valid_frame_count(self, frames: int) -> bool:
        return frames >= 1 and (frames - 1) % self.geometry.vae_stride[0] == 0

    def configure_attention(self, model: Any, config: Any) -> None:
        """Apply ``attention_implementation`` and the family's attention keys (``bsa_*``) to a loaded denoiser."""
