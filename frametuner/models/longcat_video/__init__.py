"""LongCat-Video (Meituan): 13.6B text/image-to-video DiT, umT5-XXL text, Wan 2.1 VAE."""

from .text import TextEncoder, clean_prompt
from .transformer import LongCatVideoTransformer3DModel
from .vae import VideoVAE, denormalise_latents, normalise_latents

__all__ = ["LongCatVideoTransformer3DModel", "TextEncoder", "VideoVAE", "clean_prompt", "denormalise_latents", "normalise_latents"]
