"""Shared pieces of the Wan tests: the tiny pipelines (diffusers' own classes) and text."""

from __future__ import annotations

import functools

import torch

TEXT_DIM = 64  # the tiny umT5's width


@functools.lru_cache(maxsize=None)
def _tiny_root(flavour: str, home: str):
    from frametuner.models.wan.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(flavour)


def tiny_root(flavour: str = "tiny"):
    import os

    return _tiny_root(flavour, os.environ.get("FRAMETUNER_HOME", ""))


def tiny_pipeline(flavour: str = "tiny"):
    """diffusers' WanPipeline / WanImageToVideoPipeline over the tiny checkpoint (float32, CPU)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    root = tiny_root(flavour)
    cls = WanImageToVideoPipeline if flavour.endswith("i2v") else WanPipeline
    pipe = cls.from_pretrained(root, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe, root


def frametuner_dit(root):
    """frametuner's Wan DiT (diffusers' class with the block protocol) from the same folder."""
    from frametuner.models.wan.transformer import WanTransformer

    return WanTransformer.from_pretrained(root, subfolder="transformer", torch_dtype=torch.float32).eval()


def text_embeds(valid: int, seed: int, length: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``[1, length, 64]`` embeddings and a mask with ``valid`` real tokens (rows past them are garbage
    that the mask must remove)."""
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, length, TEXT_DIM, generator=generator)
    mask = torch.zeros(1, length, dtype=torch.int64)
    mask[:, :valid] = 1
    return embeds, mask


def denoise_wan(model, latents, prompt, prompt_mask, negative, negative_mask, *, steps, guidance, shift=3.0, conditioning=None):
    """frametuner's sampling of a Wan DiT: the generic ``sampling.denoise`` over Wan's loop."""
    from frametuner.sampling import denoise

    return denoise(
        model, latents, prompt, prompt_mask, negative, negative_mask,
        steps=steps, guidance=guidance, shift=shift, conditioning=conditioning,
    )
