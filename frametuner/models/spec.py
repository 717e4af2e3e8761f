"""Value types a model family declares: its latent geometry and its LoRA layout.

The family interface itself is :class:`frametuner.models.family.ModelFamily`.
"""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True)
class UpstreamLoraFormat:
    """A family's own LoRA file format ("upstream": what its reference code loads).

    Keys are ``<key_prefix><module path with '.' -> key_dot>.lora_down.weight`` /
    ``.lora_up.weight`` (``.lora_up.blocks.<i>.weight`` for fused layers) / ``.alpha_scale``,
    one rank per file (see ``frametuner.lora.formats``).
    """

    name: str  # written into the file's metadata ("format")
    key_prefix: str
    key_dot: str


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
    # The family's upstream format (None: the family has none) and the ComfyUI format's metadata name.
    upstream: UpstreamLoraFormat | None = None
    comfyui_format: str = "comfyui"
