"""Oracle: diffusers' own WanPipeline / WanImageToVideoPipeline on the tiny random Wan.

frametuner's Wan sampling (the generic ``sampling.denoise`` driving Wan's loop) must give
the pipeline's latents (``output_type="latent"``) from the same initial latents and text
embeddings, within 1e-5 in float32.
"""

from __future__ import annotations

import pytest
import torch

from .helpers import denoise_wan, frametuner_dit, text_embeds, tiny_pipeline


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_t2v_sampling_equals_wan_pipeline(guidance):
    pipe, root = tiny_pipeline("tiny")
    latents = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(1))  # 9 frames, 32x48 px
    prompt, prompt_mask = text_embeds(7, seed=2)
    negative, negative_mask = text_embeds(3, seed=3)
    expected = pipe(
        prompt_embeds=prompt * prompt_mask[..., None],
        negative_prompt_embeds=negative * negative_mask[..., None],
        latents=latents.clone(),
        num_inference_steps=6,
        guidance_scale=guidance,
        height=32,
        width=48,
        num_frames=9,
        output_type="latent",
    ).frames
    actual = denoise_wan(frametuner_dit(root), latents, prompt, prompt_mask, negative, negative_mask, steps=6, guidance=guidance)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    # Not vacuous: the latents moved far from the start, and guidance matters.
    assert (expected - latents).abs().max() > 0.1


def test_t2v_sampling_shift_matters():
    pipe, root = tiny_pipeline("tiny")
    latents = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    prompt, mask = text_embeds(5, seed=5)
    a = denoise_wan(frametuner_dit(root), latents, prompt, mask, None, None, steps=4, guidance=1.0, shift=3.0)
    b = denoise_wan(frametuner_dit(root), latents, prompt, mask, None, None, steps=4, guidance=1.0, shift=5.0)
    assert (a - b).abs().max() > 1e-3


def test_i2v_sampling_equals_wan_image_to_video_pipeline():
    from PIL import Image

    from frametuner.models.wan.conditioning import ImageEncoder, condition_latents

    pipe, root = tiny_pipeline("tiny-i2v")
    frames, height, width = 9, 32, 48
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    latents = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(7))
    prompt, prompt_mask = text_embeds(6, seed=8)
    negative, negative_mask = text_embeds(2, seed=9)
    expected = pipe(
        image=Image.fromarray(pixels.numpy()),
        prompt_embeds=prompt * prompt_mask[..., None],
        negative_prompt_embeds=negative * negative_mask[..., None],
        latents=latents.clone(),
        num_inference_steps=5,
        guidance_scale=5.0,
        height=height,
        width=width,
        num_frames=frames,
        output_type="latent",
    ).frames

    from frametuner.models.encoders.video_vae import VideoVAE

    vae = VideoVAE.from_pretrained(root)
    conditioning = {
        "condition": condition_latents(vae, pixels, frames),
        "image_embeds": ImageEncoder.from_pretrained(root).encode(pixels),
    }
    actual = denoise_wan(
        frametuner_dit(root), latents, prompt, prompt_mask, negative, negative_mask, steps=5, guidance=5.0, conditioning=conditioning
    )
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert (expected - latents).abs().max() > 0.1
