"""LongCat-Video's flow-matching objective.

``x_s = (1 - s) x0 + s noise``, timestep ``s * 1000``, and the DiT's raw output is trained
toward ``x0 - noise`` (the negative of the usual velocity; training toward
``noise - x0`` destroys the pretrained model). ``s`` is drawn from a distribution and
then shifted: ``s' = k s / (1 + (k - 1) s)`` with k = 12. Image-to-video samples keep
their first ``num_cond_latents`` latent frames clean with timestep 0 and leave them out
of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(
    batch_size: int,
    *,
    generator: torch.Generator,
    distribution: str = "uniform",
    shift: float = 12.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> torch.Tensor:
    """Training sigmas ``[B]`` in (0, 1), float32, drawn on the generator's device."""
    device = generator.device
    if distribution == "uniform":
        sigmas = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float32)
    elif distribution == "logit_normal":
        normal = torch.randn(batch_size, generator=generator, device=device, dtype=torch.float32)
        sigmas = torch.sigmoid(logit_mean + logit_std * normal)
    else:
        raise ValueError(f"unknown timestep distribution {distribution!r}; use 'uniform' or 'logit_normal'")
    return shift_sigmas(sigmas, shift)


def sample_seeds(batch_size: int, *, generator: torch.Generator) -> torch.Tensor:
    """One noise seed per sample ``[B]`` int64 (see :func:`sample_noise`)."""
    return torch.randint(0, 2**63 - 1, (batch_size,), generator=generator, device=generator.device)


def sample_noise(shape: tuple[int, ...], seeds: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Gaussian noise ``[len(seeds), *shape]`` float32, drawn on ``device``, each sample from its own seed.

    Per-sample seeds make a sample's noise independent of which rank draws it: a batch split
    over N GPUs gets exactly the noise one GPU would draw for the whole batch, at the cost of
    its own share only.
    """
    device = torch.device(device)
    return torch.stack([
        torch.randn(shape, generator=torch.Generator(device).manual_seed(int(seed)), device=device, dtype=torch.float32)
        for seed in seeds.tolist()
    ])


@dataclass
class FlowMatchingInputs:
    noisy_latents: torch.Tensor  # [B, C, T, H, W]
    timesteps: torch.Tensor  # [B, T], sigma * 1000, 0 on condition frames
    target: torch.Tensor  # x0 - noise, float32
    num_cond_latents: int


def make_inputs(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor, num_cond_latents: int = 0) -> FlowMatchingInputs:
    """Noise ``x0`` to level ``sigmas`` per sample; condition frames stay clean."""
    x0 = x0.float()
    noise = noise.float()
    s = sigmas.float().view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * noise
    frames = x0.shape[2]
    timesteps = (sigmas.float() * 1000.0)[:, None].expand(-1, frames).clone()
    if num_cond_latents:
        noisy[:, :, :num_cond_latents] = x0[:, :, :num_cond_latents]
        timesteps[:, :num_cond_latents] = 0.0
    return FlowMatchingInputs(noisy, timesteps, x0 - noise, num_cond_latents)


def flow_matching_loss(prediction: torch.Tensor, inputs: FlowMatchingInputs) -> torch.Tensor:
    """Mean squared error in float32 over the noised frames only."""
    k = inputs.num_cond_latents
    error = prediction[:, :, k:].float() - inputs.target[:, :, k:]
    return error.square().mean()
