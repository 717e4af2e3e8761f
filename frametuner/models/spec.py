"""Value types a model family declares: its latent geometry and its LoRA layout.

The family interface itself is :class:`frametuner.models.family.ModelFamily`.
"""

from __future__ import annotations

from dataclasses import dataclass


# ---------------------------------------------------------------------- the frame rule
# A causal video VAE of temporal stride s packs the first frame alone, then groups of s:
# a clip must have 1 + s*k frames. The one home of that rule (FamilyInfo, config, data use it).
def valid_frame_count(frames: int, stride: int) -> bool:
    return frames >= 1 and (frames - 1) % stride == 0


def largest_valid_frames(available: int, stride: int) -> int:
    """Largest ``1 + stride*k`` not above ``available`` (0 when nothing fits)."""
    return 0 if available < 1 else available - (available - 1) % stride


def frame_count_problem(frames: int, stride: int, unit: str = "frames") -> tuple[str, str] | None:
    """``(message, fix)`` when ``frames`` breaks the rule, else None (``unit`` follows the number)."""
    if valid_frame_count(frames, stride):
        return None
    lower = max(1, largest_valid_frames(frames, stride))
    return (
        f"{frames}{' ' + unit if unit else ''} is not {stride}k+1 (the VAE packs the first frame alone, then groups of {stride})",
        f"use {lower} or {lower + stride}",
    )


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
