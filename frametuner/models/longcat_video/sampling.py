"""LongCat-Video's sampler: its schedule, CFG-Zero* guidance, sign flip and float32 Euler steps.

Upstream hands ``linspace(1, 0.001, steps)`` (or, for the distilled ``cfg_step_lora``,
a subset of a 50-step grid) to diffusers' ``FlowMatchEulerDiscreteScheduler``, whose
``set_timesteps`` applies the shift on top. Going through the same scheduler class keeps
the float32 rounding identical to the reference. The DiT predicts ``x0 - noise``;
upstream negates the guided prediction and lets the scheduler step with it, which is
``x <- x + (sigma_next - sigma) * (-pred)`` in float32.

``frametuner.sampling.denoise`` runs the loop; this module is what makes it LongCat's
(:class:`LongCatSamplingLoop`, built by ``LongCatVideoSpec.sampling_loop``).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ..family import DenoiseSettings, TextConditioning
from .info import INFO

NUM_TRAIN_TIMESTEPS = 1000
# The distilled LoRA was trained on a fixed 50-step grid; fewer steps pick from it.
NUM_DISTILL_GRID_STEPS = 50
# Upstream stops the linear ramp just above zero; the scheduler appends the terminal 0.
FINAL_INPUT_SIGMA = 0.001
# Keeps CFG-Zero*'s projection finite when the unconditional prediction is all zeros.
CFG_ZERO_EPS = 1e-8
DEFAULT_SHIFT = INFO.defaults.shift


def input_sigmas(steps: int, distill: bool = False) -> torch.Tensor:
    """The unshifted sigmas the pipeline passes to ``set_timesteps`` (float32, ``[steps]``)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not distill:
        return torch.linspace(1.0, FINAL_INPUT_SIGMA, steps, dtype=torch.float32)
    if steps > NUM_DISTILL_GRID_STEPS:
        raise ValueError(f"distilled sampling picks from a {NUM_DISTILL_GRID_STEPS}-step grid; use at most that many steps, not {steps}")
    stride = NUM_TRAIN_TIMESTEPS // NUM_DISTILL_GRID_STEPS
    grid = (torch.arange(NUM_DISTILL_GRID_STEPS, 0, -1, dtype=torch.float32) * stride).round().long()  # 1000, 980, ..., 20
    # Same index rule as upstream (numpy linspace then floor), so any step count picks the same entries.
    picks = np.floor(np.linspace(0, NUM_DISTILL_GRID_STEPS, num=steps, endpoint=False)).astype(np.int64)
    return grid[torch.from_numpy(picks)].float() / NUM_TRAIN_TIMESTEPS


def make_scheduler(shift: float = DEFAULT_SHIFT) -> FlowMatchEulerDiscreteScheduler:
    """LongCat-Video's scheduler config: fixed shift, no resolution-dependent shifting."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift, use_dynamic_shifting=False)


def sigmas(steps: int, shift: float = DEFAULT_SHIFT, distill: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmas [steps + 1] ending in 0, timesteps [steps] = 1000 * shifted sigma)``, float32 on the CPU."""
    scheduler = make_scheduler(shift)
    scheduler.set_timesteps(steps, sigmas=input_sigmas(steps, distill).numpy(), device="cpu")
    return scheduler.sigmas.to(torch.float32), scheduler.timesteps.to(torch.float32)


# enhance_hf (upstream generate_vc's default): the shifted schedule above this timestep is
# kept, then a uniform tail 500, 450, ..., 50 refines high frequencies.
ENHANCE_HF_FROM = 500.0
ENHANCE_HF_TAIL_STEPS = 10


def enhance_hf_sigmas(steps: int, shift: float = DEFAULT_SHIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's ``enhance_hf`` schedule: the timesteps of :func:`sigmas` strictly above 500,
    then 500, 450, ..., 50; sigmas are timesteps / 1000 then 0 (no shift on the tail).
    ``steps`` = 50 gives 56 DiT calls, 4 gives 13. Not for the distilled schedule."""
    _, timesteps = sigmas(steps, shift=shift)
    tail = torch.linspace(ENHANCE_HF_FROM, 0.0, ENHANCE_HF_TAIL_STEPS + 1, dtype=torch.float32)[:-1]
    timesteps = torch.cat([timesteps[timesteps > ENHANCE_HF_FROM], tail])
    sigma = torch.cat([timesteps / NUM_TRAIN_TIMESTEPS, torch.zeros(1)])
    return sigma, timesteps


def cfg_zero_star(uncond: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """CFG-Zero*: scale the unconditional prediction by its least-squares fit to the conditional one.

    ``st = <cond, uncond> / |uncond|^2`` per sample over all elements (condition frames
    included, as upstream), then ``uncond*st + g*(cond - uncond*st)``.
    """
    flat_uncond, flat_cond = uncond.flatten(1), cond.flatten(1)
    st = (flat_cond * flat_uncond).sum(1, keepdim=True) / ((flat_uncond**2).sum(1, keepdim=True) + CFG_ZERO_EPS)
    scaled_uncond = uncond * st.view(-1, *([1] * (uncond.dim() - 1)))
    return scaled_uncond + guidance * (cond - scaled_uncond)


# Keywords LongCat's sampler takes through ``denoise(**options)``, with their defaults there.
# (Video continuation turns both on, as upstream's generate_vc: see sampling.long_video.)
SAMPLING_OPTIONS = {"use_kv_cache": False, "enhance_hf": False, "offload_kv_cache": False}


def sampling_problems(steps: int, guidance: float, distill: bool, options: dict | None = None) -> list[str]:
    """What is wrong with these settings for LongCat's sampler (empty when fine)."""
    problems = []
    if distill and steps > NUM_DISTILL_GRID_STEPS:
        problems.append(f"--distill picks steps from a {NUM_DISTILL_GRID_STEPS}-step grid; use at most {NUM_DISTILL_GRID_STEPS} steps, not {steps}")
    if distill and (options or {}).get("enhance_hf"):
        problems.append("enhance_hf (the high-frequency refinement tail) does not combine with the distilled schedule: turn one of them off")
    return problems


class LongCatSamplingLoop:
    """One LongCat sampling run: CFG batch ``[negative, positive]`` through the DiT in one call,
    CFG-Zero*, and the Euler step on the noisy frames only (conditioning frames never move).

    Family keywords (``settings.options``, defaults in ``SAMPLING_OPTIONS``):

    * ``use_kv_cache``: with conditioning frames, run them through the DiT once
      (:meth:`~.transformer.LongCatVideoTransformer3DModel.build_condition_cache`) and give
      every step only the noisy frames. As upstream's generate_vc, CFG-Zero*'s scale is
      then computed over the noisy frames only; without the cache over all frames
      (condition frames included), so the two modes are close but not the same video.
    * ``enhance_hf``: upstream's high-frequency schedule (:func:`enhance_hf_sigmas`).
    * ``offload_kv_cache``: keep that cache in host memory (copied in block by block).
    """

    def __init__(self, model, latents: torch.Tensor, text: TextConditioning, settings: DenoiseSettings):
        options = {**SAMPLING_OPTIONS, **settings.options}
        unknown = sorted(set(options) - set(SAMPLING_OPTIONS))
        if unknown:
            raise TypeError(f"denoise() got keyword(s) LongCat-Video's sampler does not take: {', '.join(unknown)}")
        if settings.conditioning:
            raise TypeError(f"LongCat-Video takes no conditioning beyond text and latents, got {', '.join(sorted(settings.conditioning))}")
        problems = sampling_problems(settings.steps, settings.guidance, settings.distill, options)
        if problems:
            raise ValueError("; ".join(problems))
        self.model = model
        self.settings = settings
        device = latents.device
        batch, _, frames = latents.shape[:3]
        self.batch, self.frames = batch, frames
        self.k = settings.num_cond_latents
        self.use_cfg = settings.guidance > 1.0
        if self.use_cfg:
            self.text = torch.cat([text.negative_embeds, text.prompt_embeds]).to(device)
            self.text_mask = torch.cat([text.negative_mask, text.prompt_mask]).to(device)
        else:
            self.text, self.text_mask = text.prompt_embeds.to(device), text.prompt_mask.to(device)
        if options["enhance_hf"]:
            sigma, timesteps = enhance_hf_sigmas(settings.steps, shift=settings.shift)
        else:
            sigma, timesteps = sigmas(settings.steps, shift=settings.shift, distill=settings.distill)
        self.sigmas, self.timesteps = sigma.to(device), timesteps.to(device)
        self.step_sizes = self.sigmas[1:] - self.sigmas[:-1]  # float32, as the scheduler computes sigma_next - sigma
        self.copies = 2 if self.use_cfg else 1
        # Per-frame timestep: condition frames are clean (0); t * 1 and t * 0 are exact in float32.
        self.noisy_frames = (torch.arange(frames, device=device) >= self.k).to(torch.float32) if self.k else None
        # The condition frames never change: their keys/values are computed once, for both CFG branches.
        self.cache = model.build_condition_cache(latents[:, :, : self.k]) if options["use_kv_cache"] and self.k else None
        if self.cache is not None and options["offload_kv_cache"]:
            self.cache = self.cache.offloaded()

    def forward(self, latents: torch.Tensor, index: int) -> torch.Tensor:
        """The DiT's raw float32 output for the CFG batch (``[negative; positive]`` when guided);
        with the condition cache, on the noisy frames only."""
        rows = self.batch * self.copies
        if self.cache is not None:
            noisy = latents[:, :, self.k :]
            return self.model(
                hidden_states=torch.cat([noisy] * self.copies) if self.copies > 1 else noisy,
                timestep=self.timesteps[index].expand(rows, noisy.shape[2]),
                encoder_hidden_states=self.text,
                encoder_attention_mask=self.text_mask,
                num_cond_latents=self.k,
                condition_cache=self.cache,
            ).float()
        t = self.timesteps[index].expand(rows)
        if self.noisy_frames is not None:
            t = t[:, None] * self.noisy_frames
        model_input = torch.cat([latents] * self.copies) if self.copies > 1 else latents
        return self.model(
            hidden_states=model_input,
            timestep=t,
            encoder_hidden_states=self.text,
            encoder_attention_mask=self.text_mask,
            num_cond_latents=self.k,
        ).float()

    def guide(self, prediction: torch.Tensor) -> torch.Tensor:
        if not self.use_cfg:
            return prediction
        uncond, cond = prediction.chunk(2)
        return cfg_zero_star(uncond, cond, self.settings.guidance)

    def predict(self, latents: torch.Tensor, index: int) -> torch.Tensor:
        return self.guide(self.forward(latents, index))

    def step(self, latents: torch.Tensor, prediction: torch.Tensor, index: int) -> torch.Tensor:
        # Upstream negates the prediction (the DiT predicts x0 - noise) and steps x + dt * (-pred);
        # x - dt * pred is the same float32 result without materialising -pred.
        k = self.k
        if prediction.shape[2] != latents.shape[2]:  # cached: the prediction covers the noisy frames only
            latents[:, :, k:] -= self.step_sizes[index] * prediction
        else:
            latents[:, :, k:] -= self.step_sizes[index] * prediction[:, :, k:]
        return latents

    def close(self) -> None:
        self.cache = None  # several GB at 480p: free it with the run
