"""The denoising loop: one loop for every model family.

Pure function over a denoiser and normalised latents; no encoders, no files. What makes
a run one family's (its schedule, guidance, the denoiser call and the step) comes from
the family's :meth:`~frametuner.models.family.ModelFamily.sampling_loop`; the family is
found from the model (:func:`~frametuner.models.family.family_of`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.family import DenoiseSettings, TextConditioning, family_of


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


def text_conditioning(
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    negative_embeds: torch.Tensor | None,
    negative_mask: torch.Tensor | None,
    *,
    batch: int,
    use_cfg: bool,
    guidance: float,
) -> TextConditioning:
    """The prompts broadcast to ``batch`` (``[B, 1, L, C]`` embeddings, ``[B, L]`` masks)."""
    prompt_embeds, prompt_mask = _batched(prompt_embeds, prompt_mask, batch, "prompt")
    if not use_cfg:
        return TextConditioning(prompt_embeds, prompt_mask)
    if negative_embeds is None or negative_mask is None:
        raise ValueError(
            f"guidance {guidance} > 1 needs negative_embeds and negative_mask: encode the negative prompt "
            "(the empty prompt \"\" when there is none, as upstream does), or use guidance 1.0"
        )
    negative_embeds, negative_mask = _batched(negative_embeds, negative_mask, batch, "negative")
    return TextConditioning(prompt_embeds, prompt_mask, negative_embeds, negative_mask)


@torch.no_grad()
def denoise(
    model,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    negative_embeds: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
    *,
    steps: int | None = None,
    guidance: float | None = None,
    shift: float | None = None,
    num_cond_latents: int = 0,
    distill: bool = False,
    progress: bool | str = False,
    use_kv_cache: bool | None = None,
    enhance_hf: bool | None = None,
    conditioning: dict[str, Any] | None = None,
    **options: Any,
) -> torch.Tensor:
    """Denoise normalised ``latents [B, C, T, H, W]`` (noise, with any condition frames already
    written into the first ``num_cond_latents`` frames) and return the final latents (float32).

    ``steps``, ``guidance`` and ``shift`` default to the model family's. Guidance > 1 needs
    the negative embeddings (upstream encodes ``""`` when no negative prompt is given, so
    pass the empty prompt's embeddings). Condition frames are never stepped. The input
    tensor is not modified. ``progress`` shows a tqdm bar (a string: its label). ``conditioning`` (family inputs
    beyond text, e.g. image embeddings) and further keywords (``options``) go to the
    family's sampler, which refuses what it does not know. The family is found from the
    model (:func:`~frametuner.models.family.family_of`).

    ``use_kv_cache`` and ``enhance_hf`` are family options named here because callers of
    video continuation pass them (None = the family's default, which may differ from what its
    continuation runs with: ``FamilyInfo.continuation``), e.g. the condition frames' keys and
    values computed once instead of every step, and a schedule with a high-frequency tail.
    """
    for name, value in (("use_kv_cache", use_kv_cache), ("enhance_hf", enhance_hf)):
        if value is not None:
            options[name] = bool(value)
    if latents.dim() != 5:
        raise ValueError(f"latents must be [B, C, T, H, W], got {tuple(latents.shape)}")
    batch, _, frames = latents.shape[:3]
    if not 0 <= num_cond_latents < frames:
        raise ValueError(f"num_cond_latents={num_cond_latents} must leave at least one of the {frames} latent frames to denoise")
    family = family_of(model)
    settings = DenoiseSettings(
        steps=steps, guidance=guidance, shift=shift, num_cond_latents=num_cond_latents, distill=distill,
        progress=bool(progress), options=dict(options), conditioning=dict(conditioning or {}),
    ).resolved(family.defaults)
    text = text_conditioning(
        prompt_embeds, prompt_mask, negative_embeds, negative_mask,
        batch=batch, use_cfg=settings.guidance > 1.0, guidance=settings.guidance,
    )
    latents = latents.to(torch.float32, copy=True)
    loop = family.sampling_loop(model, latents, text, settings)

    indices = range(len(loop.timesteps))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=progress if isinstance(progress, str) else "denoising", unit="step")
    try:
        for i in indices:
            latents = loop.step(latents, loop.predict(latents, i), i)
    finally:
        close = getattr(loop, "close", None)
        if callable(close):
            close()
    return latents
