"""The denoising loop of LongCat-Video: CFG-Zero* guidance, sign flip, float32 Euler steps.

Pure function over a DiT and normalised latents; no encoders, no files. The DiT predicts
``x0 - noise``; upstream negates the guided prediction and lets the flow-match Euler
scheduler step with it, which is ``x <- x + (sigma_next - sigma) * (-pred)`` in float32.
"""

from __future__ import annotations

import torch

from .schedule import sigmas as schedule_sigmas

# Keeps CFG-Zero*'s projection finite when the unconditional prediction is all zeros.
CFG_ZERO_EPS = 1e-8


def _batched(embeds: torch.Tensor, mask: torch.Tensor, batch: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings as ``[B, 1, L, C]`` and mask ``[B, L]``; a batch of 1 is broadcast to ``batch``."""
    if embeds.dim() == 3:
        embeds = embeds.unsqueeze(1)
    if embeds.dim() != 4 or embeds.shape[1] != 1:
        raise ValueError(f"{what} embeddings must be [B, L, C] or [B, 1, L, C], got {tuple(embeds.shape)}")
    mask = mask.reshape(mask.shape[0], -1)
    if embeds.shape[0] == 1 and batch > 1:
        embeds, mask = embeds.expand(batch, -1, -1, -1), mask.expand(batch, -1)
    if embeds.shape[0] != batch or mask.shape[0] != batch or mask.shape[1] != embeds.shape[2]:
        raise ValueError(
            f"{what} embeddings {tuple(embeds.shape)} / mask {tuple(mask.shape)} do not match {batch} latent sample(s) "
            "(need the same batch, or a batch of 1, and a mask of one entry per token)"
        )
    return embeds, mask


def cfg_zero_star(uncond: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """CFG-Zero*: scale the unconditional prediction by its least-squares fit to the conditional one.

    ``st = <cond, uncond> / |uncond|^2`` per sample over all elements (condition frames
    included, as upstream), then ``uncond*st + g*(cond - uncond*st)``.
    """
    flat_uncond, flat_cond = uncond.flatten(1), cond.flatten(1)
    st = (flat_cond * flat_uncond).sum(1, keepdim=True) / ((flat_uncond**2).sum(1, keepdim=True) + CFG_ZERO_EPS)
    scaled_uncond = uncond * st.view(-1, *([1] * (uncond.dim() - 1)))
    return scaled_uncond + guidance * (cond - scaled_uncond)


@torch.no_grad()
def denoise(
    model,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    negative_embeds: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
    *,
    steps: int = 50,
    guidance: float = 4.0,
    shift: float = 12.0,
    num_cond_latents: int = 0,
    distill: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Denoise normalised ``latents [B, 16, T, H, W]`` (noise, with any condition frames already
    written into the first ``num_cond_latents`` frames) and return the final latents (float32).

    Guidance > 1 runs the DiT on the batch ``[negative, positive]``; the negative embeddings
    are then required (upstream encodes ``""`` when no negative prompt is given, so pass the
    empty prompt's embeddings). Condition frames get timestep 0 and are never stepped.
    The input tensor is not modified. ``progress`` shows a tqdm bar.
    """
    if latents.dim() != 5:
        raise ValueError(f"latents must be [B, C, T, H, W], got {tuple(latents.shape)}")
    batch, _, frames = latents.shape[:3]
    if not 0 <= num_cond_latents < frames:
        raise ValueError(f"num_cond_latents={num_cond_latents} must leave at least one of the {frames} latent frames to denoise")
    device = latents.device
    use_cfg = guidance > 1.0

    prompt_embeds, prompt_mask = _batched(prompt_embeds, prompt_mask, batch, "prompt")
    if use_cfg:
        if negative_embeds is None or negative_mask is None:
            raise ValueError(
                f"guidance {guidance} > 1 needs negative_embeds and negative_mask: encode the negative prompt "
                "(the empty prompt \"\" when there is none, as upstream does), or use guidance 1.0"
            )
        negative_embeds, negative_mask = _batched(negative_embeds, negative_mask, batch, "negative")
        text = torch.cat([negative_embeds, prompt_embeds]).to(device)
        text_mask = torch.cat([negative_mask, prompt_mask]).to(device)
    else:
        text, text_mask = prompt_embeds.to(device), prompt_mask.to(device)

    sigma, timesteps = schedule_sigmas(steps, shift=shift, distill=distill)
    sigma, timesteps = sigma.to(device), timesteps.to(device)
    step_sizes = sigma[1:] - sigma[:-1]  # float32, as the scheduler computes sigma_next - sigma

    latents = latents.to(torch.float32, copy=True)
    copies = 2 if use_cfg else 1
    # Per-frame timestep: condition frames are clean (0); t * 1 and t * 0 are exact in float32.
    noisy_frames = None
    if num_cond_latents:
        noisy_frames = (torch.arange(frames, device=device) >= num_cond_latents).to(torch.float32)

    indices = range(steps)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="denoising", unit="step")
    for i in indices:
        t = timesteps[i].expand(batch * copies)
        if noisy_frames is not None:
            t = t[:, None] * noisy_frames
        model_input = torch.cat([latents] * copies) if copies > 1 else latents
        pred = model(
            hidden_states=model_input,
            timestep=t,
            encoder_hidden_states=text,
            encoder_attention_mask=text_mask,
            num_cond_latents=num_cond_latents,
        ).float()
        if use_cfg:
            uncond, cond = pred.chunk(2)
            pred = cfg_zero_star(uncond, cond, guidance)
        # Upstream negates the prediction (the DiT predicts x0 - noise) and steps x + dt * (-pred);
        # x - dt * pred is the same float32 result without materialising -pred.
        latents[:, :, num_cond_latents:] -= step_sizes[i] * pred[:, :, num_cond_latents:]
    return latents
