"""Wan 2.1's sampling loop: plain classifier-free guidance and diffusers' UniPC flow solver.

What ``WanPipeline`` / ``WanImageToVideoPipeline`` do per step, as a
:class:`~frametuner.models.family.SamplingLoop` the generic ``sampling.denoise`` drives:

- the DiT predicts the velocity ``noise - x0`` at timestep ``1000 * sigma``;
- guidance is plain CFG, ``uncond + g * (cond - uncond)`` (default 5.0); the conditional
  and unconditional predictions run as one batch ``[negative, positive]`` (the pipeline
  runs two calls; the rows are the same computation);
- the step is diffusers' ``UniPCMultistepScheduler`` (``flow_prediction``, flow sigmas,
  ``flow_shift`` 3.0 for 480p, 5.0 for 720p), the scheduler the released Diffusers
  checkpoints ship, so its float32 arithmetic is the pipeline's own;
- text is umT5's output zero-padded to 512 tokens and there is no attention mask: the DiT
  attends to the padding rows (as it was trained to);
- image-to-video (I2V-14B): the DiT input is ``[latents, mask (4), condition latents (16)]``
  on the channel axis, and CLIP image features go in as ``encoder_hidden_states_image``
  (see :mod:`frametuner.models.wan.conditioning`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# diffusers' documented default for Wan 2.1 and the released Diffusers checkpoints'
# scheduler/scheduler_config.json (with flow_shift 3.0; 5.0 is advised for 720p).
SCHEDULER_CONFIG = dict(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0)
TEXT_LENGTH = 512


def make_scheduler(shift: float):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**{**SCHEDULER_CONFIG, "flow_shift": float(shift)})


def pad_text(embeds: torch.Tensor, mask: torch.Tensor | None, length: int = TEXT_LENGTH) -> torch.Tensor:
    """``[B, L, C]`` (or ``[B, 1, L, C]``) -> ``[B, length, C]``: rows past each mask's valid
    tokens set to zero, then zero-padded (or cut) to ``length``, as the pipeline feeds the DiT."""
    if embeds.dim() == 4:
        embeds = embeds.squeeze(1)
    if mask is not None:
        mask = mask.reshape(mask.shape[0], -1)
        embeds = embeds * mask[:, :, None].to(embeds.dtype)
    if embeds.shape[1] > length:
        if mask is not None and bool((mask[:, length:] != 0).any()):
            raise ValueError(f"text has more than {length} valid tokens; Wan's DiT reads at most {length}")
        return embeds[:, :length]
    return F.pad(embeds, (0, 0, 0, length - embeds.shape[1]))


def model_dtype(model) -> torch.dtype:
    """The dtype the DiT's inputs are cast to (its patch embedding's weight dtype; a
    quantised base keeps that layer unquantised)."""
    from ..family import unwrap_model

    return unwrap_model(model).patch_embedding.weight.dtype


def _batched(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    if tensor.shape[0] == 1 and batch > 1:
        return tensor.expand(batch, *tensor.shape[1:])
    if tensor.shape[0] != batch:
        raise ValueError(f"conditioning of batch {tensor.shape[0]} does not match {batch} latent sample(s)")
    return tensor


class WanSamplingLoop:
    """One sampling run: ``timesteps``, ``predict(latents, i)`` (guided velocity), ``step``."""

    def __init__(
        self,
        model,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor | None,
        negative_embeds: torch.Tensor | None,
        negative_mask: torch.Tensor | None,
        *,
        steps: int,
        guidance: float,
        shift: float,
        conditioning: dict[str, Any] | None = None,
        text_length: int = TEXT_LENGTH,
    ):
        if latents.dim() != 5:
            raise ValueError(f"latents must be [B, C, T, H, W], got {tuple(latents.shape)}")
        self.model = model
        self.batch = latents.shape[0]
        device = latents.device
        self.dtype = model_dtype(model)
        self.guidance = float(guidance)
        self.use_cfg = self.guidance > 1.0
        text = _batched(pad_text(prompt_embeds, prompt_mask, text_length), self.batch)
        if self.use_cfg:
            if negative_embeds is None:
                raise ValueError(
                    f"guidance {guidance} > 1 needs the negative prompt's embeddings (the empty prompt \"\" when there is "
                    "none, as WanPipeline does), or use guidance 1.0"
                )
            negative = _batched(pad_text(negative_embeds, negative_mask, text_length), self.batch)
            text = torch.cat([negative, text])
        self.text = text.to(device, self.dtype)

        conditioning = dict(conditioning or {})
        condition = conditioning.pop("condition", None)  # I2V: [B, 4 + C, T, h, w]
        image_embeds = conditioning.pop("image_embeds", None)  # I2V: [B, N, image_dim]
        if conditioning:
            raise ValueError(f"Wan's sampler does not take the conditioning {sorted(conditioning)}")
        from ..family import unwrap_model

        config = unwrap_model(model).config  # through PEFT / DDP / compile wrappers
        in_channels = int(config.in_channels)
        expected = latents.shape[1] + (condition.shape[1] if condition is not None else 0)
        if expected != in_channels:
            raise ValueError(
                f"the DiT takes {in_channels} input channels but gets {expected}: an image-to-video model needs an input "
                "image (its mask and condition latents), a text-to-video model none"
            )
        if (image_embeds is None) != (config.image_dim is None):
            raise ValueError("image features (CLIP) are needed exactly when the DiT has an image embedder (I2V-14B)")
        copies = 2 if self.use_cfg else 1
        self.condition = None
        if condition is not None:
            self.condition = torch.cat([_batched(condition, self.batch)] * copies).to(device, torch.float32)
        self.image_embeds = None
        if image_embeds is not None:
            self.image_embeds = torch.cat([_batched(image_embeds, self.batch)] * copies).to(device, self.dtype)

        self.scheduler = make_scheduler(shift)
        self.scheduler.set_timesteps(steps, device=device)
        self.scheduler.set_begin_index(0)
        self.timesteps = self.scheduler.timesteps

    def predict(self, latents: torch.Tensor, i: int) -> torch.Tensor:
        """The guided velocity at step ``i`` (in the DiT's dtype, as the pipeline hands it to the scheduler)."""
        t = self.timesteps[i]
        copies = 2 if self.use_cfg else 1
        x = torch.cat([latents] * copies) if copies > 1 else latents
        if self.condition is not None:
            x = torch.cat([x, self.condition], dim=1)
        pred = self.model(
            hidden_states=x.to(self.dtype),
            timestep=t.expand(x.shape[0]),
            encoder_hidden_states=self.text,
            encoder_hidden_states_image=self.image_embeds,
            return_dict=False,
        )[0]
        if not self.use_cfg:
            return pred
        uncond, cond = pred.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def step(self, latents: torch.Tensor, prediction: torch.Tensor, i: int) -> torch.Tensor:
        return self.scheduler.step(prediction, self.timesteps[i], latents, return_dict=False)[0]

    def close(self) -> None:
        self.scheduler = None
