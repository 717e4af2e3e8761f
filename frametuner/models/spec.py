"""The interface every model family implements; trainer and sampler only talk to this.

A ``ModelSpec`` knows the family's facts (strides, shift, bucket grid, LoRA targets,
folders of its checkpoint) and how to load each component. Nothing outside
``models/<family>/`` tests which family it is running.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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


@dataclass(frozen=True)
class LoraLayout:
    """How a family's layers appear in the LoRA file formats (read by ``frametuner.lora``).

    Layer names are frametuner module names, either inside a block (``attn.qkv`` means
    ``<block_prefix>.<i>.attn.qkv``) or from the model root (``final_layer.linear``).
    """

    block_prefix: str
    # The model's other top-level children: a layer name starting with one of these is
    # named from the root (``final_layer.linear``), any other from inside a block.
    root_children: tuple[str, ...]
    # Fused Linear layers -> how many equal output parts upstream's format gives own up blocks.
    fused_outputs: dict[str, int]
    # Layer -> its names in ComfyUI-WanVideoWrapper, one per output part (a fused layer that
    # the wrapper keeps as separate Linears is split into that many parts).
    comfyui_names: dict[str, tuple[str, ...]]
    comfyui_prefix: str = "diffusion_model."
    # Linear subclasses that compute in float32: their LoRA path must too.
    fp32_linear_types: tuple[type, ...] = ()


class ModelSpec(ABC):
    family: str
    geometry: LatentGeometry
    flow_shift: float
    bucket_alignment: int
    default_fps: int
    text_max_length: int
    default_lora_targets: tuple[str, ...]
    optional_lora_targets: tuple[str, ...] = ()
    lora_layout: LoraLayout | None = None
    transformer_class: type | None = None

    @abstractmethod
    def checkpoint_root(self, flavour: str, pretrained_model_name_or_path: str | None) -> str | Path:
        """Local folder (or hub id) holding the family's checkpoint layout."""

    @abstractmethod
    def load_transformer(
        self, root: str | Path, *, dtype: torch.dtype, device: str | torch.device = "cpu", prepare_block: Callable[[Any], None] | None = None
    ) -> Any:
        """The denoiser, loaded shard by shard and cast while loading.

        ``prepare_block`` (optional): called on each block right after its weights are read
        (quantisation while loading); it places the block. See ``models/loading.py``.
        """

    @abstractmethod
    def build_transformer(self, *, flavour: str = "final", device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16) -> Any:
        """The denoiser for a flavour with random weights (for benchmarks and tests)."""

    def valid_frame_count(self, frames: int) -> bool:
        return frames >= 1 and (frames - 1) % self.geometry.vae_stride[0] == 0

    def encoder_dtype(self, mixed_precision: str) -> torch.dtype:
        """Dtype the text encoder and VAE run in while caching: bfloat16, or float32 when
        training in full precision (never float16: T5-family encoders overflow in it)."""
        return torch.float32 if mixed_precision == "no" else torch.bfloat16

    @abstractmethod
    def load_text_encoder(self, root: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any:
        """The text encoder + tokenizer: ``encode(prompts) -> (embeddings [B, L, C], mask [B, L] int64)``, ``identity``."""

    @abstractmethod
    def load_vae(self, root: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any:
        """The video autoencoder: ``encode(uint8 [F, H, W, 3]) -> normalised latents``, ``decode``, ``identity``."""

    @abstractmethod
    def text_encoder_identity(self, root: str | Path, *, dtype: torch.dtype = torch.float32) -> str:
        """The text encoder's ``identity`` without loading its weights (for cache keys)."""

    @abstractmethod
    def vae_identity(self, root: str | Path, *, dtype: torch.dtype = torch.float32) -> str:
        """The VAE's ``identity`` without loading its weights (for cache keys)."""

    def configure_attention(self, model: Any, config: Any) -> None:
        """Apply ``attention_implementation`` and the family's attention keys (``bsa_*``) to a loaded denoiser."""
