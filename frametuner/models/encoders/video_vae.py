"""The Wan 2.1 VAE (LongCat-Video and Wan 2.1 both use it): uint8 clips <-> normalised latents.

Latents are normalised per channel with the VAE config's ``latents_mean``/``latents_std``
exactly as upstream does: ``(z - mean) * r`` with ``r = 1 / std`` computed as a float32
tensor first (multiplying by the reciprocal is not bit-identical to dividing), and
``x / r + mean`` to go back.

Training latents use the posterior **mean** (``latent_dist.mode()``), not a sample:
upstream conditions image-to-video and continuation on the mean, so the clean frames the
model sees at inference come from the mean, and Wan's posterior is narrow, so sampling
would add almost no augmentation while making a cache entry depend on a random draw (the
same key could then hold different bytes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..components import component_identity, free_accelerator_memory, resolve_component


def _channel_stats(values: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[C, 1, 1, 1]`` float32 on ``like``'s device; broadcasts over ``[C, T, H, W]`` and ``[B, C, T, H, W]``."""
    return torch.as_tensor(values, dtype=torch.float32).to(like.device).view(-1, 1, 1, 1)


def normalise_latents(z: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``(z - mean) * (1 / std)`` per channel (channel dim -4), computed in float32."""
    reciprocal = 1.0 / _channel_stats(std, z)
    return ((z.float() - _channel_stats(mean, z)) * reciprocal).to(z.dtype)


def denormalise_latents(x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalise_latents`: ``x / (1 / std) + mean``, as upstream writes it."""
    reciprocal = 1.0 / _channel_stats(std, x)
    return (x.float() / reciprocal + _channel_stats(mean, x)).to(x.dtype)


# Tiles of 256 px overlapping by 64 (diffusers' defaults, pinned here because they are part
# of what a cached latent is: a clip larger than one tile is encoded tile by tile).
TILING = dict(tile_sample_min_height=256, tile_sample_min_width=256, tile_sample_stride_height=192, tile_sample_stride_width=192)


class VideoVAE:
    """``AutoencoderKLWan`` behind a clip-level interface: ``[F, H, W, 3]`` uint8 <-> ``[16, T, H/8, W/8]``.

    Tiling is always on: diffusers only tiles inputs larger than one tile (:data:`TILING`), so
    small clips run untiled and a 93-frame 720p clip fits on a small GPU. An image is a
    1-frame clip.
    """

    temporal_stride = 4
    spatial_stride = 8

    def __init__(self, model, *, identity: str, dtype: torch.dtype):
        self.model = model
        self.identity = identity
        self.dtype = dtype
        self.latents_mean = torch.tensor(model.config.latents_mean, dtype=torch.float32)
        self.latents_std = torch.tensor(model.config.latents_std, dtype=torch.float32)
        model.enable_tiling(**TILING)
        model.enable_slicing()

    @classmethod
    def from_pretrained(cls, root: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, subfolder: str = "vae") -> "VideoVAE":
        from diffusers import AutoencoderKLWan

        folder = resolve_component(root, subfolder)
        model = AutoencoderKLWan.from_pretrained(folder, torch_dtype=dtype).eval().requires_grad_(False)
        return cls(model.to(device), identity=vae_identity(folder, dtype=dtype), dtype=dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "VideoVAE":
        self.model.to(device)
        return self

    def unload(self) -> None:
        self.model = None
        free_accelerator_memory()

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return normalise_latents(z, self.latents_mean, self.latents_std)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return denormalise_latents(x, self.latents_mean, self.latents_std)

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"VideoVAE.encode wants uint8 [frames, height, width, 3]; got {pixels.dtype} {list(pixels.shape)}")
        frames, height, width, _ = pixels.shape
        if (frames - 1) % self.temporal_stride:
            raise ValueError(f"{frames} frames is not 4k+1 (the VAE encodes the first frame alone, then groups of 4)")
        if height % self.spatial_stride or width % self.spatial_stride:
            raise ValueError(f"{height}x{width} is not a multiple of {self.spatial_stride} (the VAE's spatial stride)")

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[F, H, W, 3]`` -> normalised float32 ``[16, 1+(F-1)//4, H//8, W//8]`` on the VAE's device."""
        if self.model is None:
            raise RuntimeError("this VideoVAE was unloaded; load it again with spec.load_vae(root)")
        self._check_pixels(pixels)
        video = pixels.to(self.device).permute(3, 0, 1, 2).unsqueeze(0)  # [1, 3, F, H, W], moved as uint8
        video = video.to(self.dtype) / 127.5 - 1.0
        z = self.model.encode(video).latent_dist.mode()[0].float()
        return self.normalise(z)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised ``[16, T, h, w]`` -> uint8 ``[1+4(T-1), 8h, 8w, 3]`` on the CPU (ready to write)."""
        if self.model is None:
            raise RuntimeError("this VideoVAE was unloaded; load it again with spec.load_vae(root)")
        if latents.ndim != 4:
            raise ValueError(f"VideoVAE.decode wants one clip [channels, frames, height, width]; got {list(latents.shape)}")
        z = self.denormalise(latents.to(self.device).float()).to(self.dtype).unsqueeze(0)
        video = self.model.decode(z).sample[0].float().clamp(-1.0, 1.0)  # [3, F, H, W]
        return ((video + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu()


def vae_identity(folder: str | Path, *, dtype: torch.dtype) -> str:
    """What decides a latent besides the pixels: weights, dtype, posterior mode, tiling."""
    return component_identity(
        "wan-vae",
        [folder],
        dtype=dtype,
        settings={"posterior": "mode", "pixels": "uint8/127.5-1", "normalise": "upstream-reciprocal", "tiling": TILING},
    )
