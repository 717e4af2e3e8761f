"""The umT5 + Wan 2.1 VAE encoders as a family's loaders (one home for both families that ship them).

A family class lists :class:`UMT5WanVAEEncoders` before :class:`~frametuner.models.family.ModelFamily`
and keeps ``subfolders`` (``text_encoder``, ``tokenizer``, ``vae``) and ``defaults.text_length``;
the identities are the cache keys, so two families shipping the same files share cache entries.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..components import resolve_component
from .umt5 import TextEncoder, text_encoder_identity
from .video_vae import VideoVAE, vae_identity


class UMT5WanVAEEncoders:
    """``load_text_encoder`` / ``load_vae`` / their identities for a umT5 + Wan 2.1 VAE checkpoint."""

    def load_text_encoder(self, root: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TextEncoder:
        """umT5 from ``<root>/<text_encoder>`` + ``<root>/<tokenizer>``; prompts cleaned and zero-padded to the family's text length."""
        return TextEncoder.from_pretrained(
            root,
            device=device,
            dtype=dtype,
            max_length=self.defaults.text_length,
            text_encoder_subfolder=self.subfolders["text_encoder"],
            tokenizer_subfolder=self.subfolders["tokenizer"],
        )

    def load_vae(self, root: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VideoVAE:
        """The Wan 2.1 VAE from ``<root>/<vae>``, tiling on; latents ``(z - mean) / std`` with its config's statistics."""
        return VideoVAE.from_pretrained(root, device=device, dtype=dtype, subfolder=self.subfolders["vae"])

    def text_encoder_identity(self, root: str | Path, *, dtype: torch.dtype = torch.float32) -> str:
        return text_encoder_identity(
            resolve_component(root, self.subfolders["text_encoder"]),
            resolve_component(root, self.subfolders["tokenizer"]),
            dtype=dtype,
            max_length=self.defaults.text_length,
        )

    def vae_identity(self, root: str | Path, *, dtype: torch.dtype = torch.float32) -> str:
        return vae_identity(resolve_component(root, self.subfolders["vae"]), dtype=dtype)
