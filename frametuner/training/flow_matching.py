"""Flow matching: the random draws of a training step and the loss.

``s`` is drawn from a distribution and then shifted: ``s' = k s / (1 + (k - 1) s)`` with
the family's training shift (or ``flow_schedule_shift``). What the denoiser sees for a
level ``s`` and what it is trained toward (``x_s = (1 - s) x0 + s noise`` and the
target's sign, the timestep units, the conditioning frames) is the family's
(``ModelFamily.training_inputs``); the loss is the squared error over each sample's
noised frames.
"""

from __future__ import annotations

import torch

from ..models.family import TrainingInputs


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(
    batch_size: int,
    *,
    generator: torch.Generator,
    distribution: str = "uniform",
    shift: float,
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


def flow_matching_loss(prediction: torch.Tensor, inputs: TrainingInputs) -> torch.Tensor:
    """Mean squared error in float32 over each sample's noised frames, averaged over samples.

    ``inputs`` comes from the family (``ModelFamily.training_inputs``): its ``target`` is the
    family's objective and its ``loss_mask`` leaves each sample's conditioning frames out.
    """
    ks = inputs.num_cond_latents
    if bool((ks == ks[0]).all()):  # one K for the batch: the plain mean over the noised frames
        k = int(ks[0])
        error = prediction[:, :, k:].float() - inputs.target[:, :, k:]
        return error.square().mean()
    mask = inputs.loss_mask.to(prediction.device)
    squared = (prediction.float() - inputs.target).square() * mask
    per_element = prediction[0, :, 0].numel()  # C * H * W: one latent frame of one sample
    counts = mask.flatten(1).sum(1) * per_element
    return (squared.flatten(1).sum(1) / counts).mean()
