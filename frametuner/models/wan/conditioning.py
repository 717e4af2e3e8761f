"""Wan 2.1 image-to-video conditioning, as ``WanImageToVideoPipeline`` builds it.

The I2V-14B DiT reads 36 channels: the 16 noisy latent channels, then 4 mask channels
(1 on the first latent frame, 0 elsewhere: the first latent frame stands for the first
pixel frame alone, repeated 4 times by the pipeline's construction), then the 16 channels
of the VAE latents of the video ``[image, 0, 0, ...]`` (the image followed by ``frames - 1``
mid-grey frames, 0 in [-1, 1]), normalised like any latent. It also cross-attends to CLIP
ViT-H/14 features of the image (the penultimate layer's hidden states, 257 tokens).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..components import component_identity, free_accelerator_memory, resolve_component

MASK_CHANNELS = 4  # the VAE's temporal stride: one mask channel per pixel frame of a latent frame


def _as_image(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    image = torch.as_tensor(np.asarray(image)) if not isinstance(image, torch.Tensor) else image
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"one image is needed, got {image.shape[0]} frames")
        image = image[0]
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[-1] != 3:
        raise ValueError(f"the image must be uint8 [height, width, 3] (or [1, height, width, 3]); got {image.dtype} {list(image.shape)}")
    return image


@torch.no_grad()
def condition_latents(vae, image: torch.Tensor | np.ndarray, frames: int) -> torch.Tensor:
    """``[1, 4 + C, T, h, w]`` float32: the mask channels, then the normalised latents of
    ``[image, grey x (frames - 1)]``; ``vae`` is frametuner's Wan VAE wrapper (``VideoVAE``)."""
    image = _as_image(image)
    height, width = image.shape[:2]
    stride = vae.temporal_stride
    if (frames - 1) % stride:
        raise ValueError(f"{frames} frames is not {stride}k+1")
    # The pipeline's VideoProcessor: x / 255 in float32, then 2x - 1.
    first = image.permute(2, 0, 1).float().div(255.0).mul(2.0).sub(1.0)  # [3, H, W]
    video = torch.zeros(1, 3, frames, height, width, dtype=torch.float32)
    video[0, :, 0] = first
    z = vae.model.encode(video.to(vae.device, vae.dtype)).latent_dist.mode()[0].float()
    latents = vae.normalise(z)  # [C, T, h, w]
    mask = torch.zeros(MASK_CHANNELS, *latents.shape[1:], dtype=torch.float32, device=latents.device)
    mask[:, 0] = 1.0
    return torch.cat([mask, latents]).unsqueeze(0)


class ImageEncoder:
    """CLIP vision tower + its processor: uint8 image in, penultimate hidden states ``[1, N, D]`` out."""

    def __init__(self, model, processor, *, identity: str, dtype: torch.dtype):
        self.model = model
        self.processor = processor
        self.identity = identity
        self.dtype = dtype

    @classmethod
    def from_pretrained(
        cls, root: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
        encoder_subfolder: str = "image_encoder", processor_subfolder: str = "image_processor",
    ) -> "ImageEncoder":
        from transformers import CLIPImageProcessor, CLIPVisionModel

        encoder_folder = resolve_component(root, encoder_subfolder)
        processor_folder = resolve_component(root, processor_subfolder)
        model = CLIPVisionModel.from_pretrained(encoder_folder, dtype=dtype).eval().requires_grad_(False)
        processor = CLIPImageProcessor.from_pretrained(processor_folder)
        identity = image_encoder_identity(encoder_folder, processor_folder, dtype=dtype)
        return cls(model.to(device), processor, identity=identity, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "ImageEncoder":
        self.model.to(device)
        return self

    def unload(self) -> None:
        self.model = None
        free_accelerator_memory()

    @torch.no_grad()
    def encode(self, image: torch.Tensor | np.ndarray) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("this ImageEncoder was unloaded; load it again with family.load_image_encoder(root)")
        pixels = self.processor(images=_as_image(image).numpy(), return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels.to(self.device, self.dtype), output_hidden_states=True)
        return out.hidden_states[-2]


def image_encoder_identity(encoder_folder: str | Path, processor_folder: str | Path, *, dtype: torch.dtype) -> str:
    return component_identity("clip-vision", [encoder_folder, processor_folder], dtype=dtype, settings={"hidden_state": -2})


class TrainingConditioner:
    """The image-to-video Wan's per-sample training inputs, computed once at caching time:
    ``condition`` ``[4 + C, T, h, w]`` (:func:`condition_latents`: mask + VAE latents of
    ``[image, grey...]``) and ``image_embeds`` ``[N, D]`` (CLIP), as the sampler builds them
    (and ``WanImageToVideoPipeline.prepare_latents`` / ``encode_image``)."""

    names = ("condition", "image_embeds")

    def __init__(self, vae, image_encoder, *, identity: str):
        self.vae = vae
        self.image_encoder = image_encoder
        self.identity = identity

    def to(self, device) -> "TrainingConditioner":
        self.vae.to(device)
        self.image_encoder.to(device)
        return self

    def unload(self) -> None:
        self.vae.unload()
        self.image_encoder.unload()

    @torch.no_grad()
    def encode(self, image: torch.Tensor, frames: int) -> dict[str, torch.Tensor]:
        return {
            "condition": condition_latents(self.vae, image, frames)[0].float().cpu(),
            "image_embeds": self.image_encoder.encode(image)[0].float().cpu(),
        }
