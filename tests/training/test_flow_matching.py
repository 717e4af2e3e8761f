"""The training target and the i2v rules, checked analytically."""

from __future__ import annotations

import torch

from frametuner.models.registry import load_spec
from frametuner.training.flow_matching import flow_matching_loss, sample_sigmas, shift_sigmas

make_inputs = load_spec("longcat_video").training_inputs  # LongCat's objective: x0 - noise, timestep 1000 s


def test_target_sign_x0_minus_noise():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 16, 3, 4, 6, generator=g), torch.randn(2, 16, 3, 4, 6, generator=g)
    inputs = make_inputs(x0, noise, torch.tensor([0.3, 0.9]))
    assert flow_matching_loss(x0 - noise, inputs).item() == 0.0
    wrong = flow_matching_loss(noise - x0, inputs).item()
    assert abs(wrong - 4 * (x0 - noise).square().mean().item()) < 1e-5


def test_noising_and_timesteps():
    x0, noise = torch.full((1, 16, 3, 2, 2), 2.0), torch.full((1, 16, 3, 2, 2), -1.0)
    inputs = make_inputs(x0, noise, torch.tensor([0.25]))
    assert torch.allclose(inputs.noisy_latents, torch.full_like(x0, 0.75 * 2.0 - 0.25))
    assert torch.equal(inputs.timesteps, torch.full((1, 3), 250.0))


def test_i2v_first_frame_clean_timestep_zero_and_no_gradient():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 16, 3, 4, 6, generator=g), torch.randn(2, 16, 3, 4, 6, generator=g)
    inputs = make_inputs(x0, noise, torch.tensor([0.5, 0.8]), num_cond_latents=1)
    assert torch.equal(inputs.noisy_latents[:, :, 0], x0[:, :, 0])
    assert torch.equal(inputs.timesteps[:, 0], torch.zeros(2)) and (inputs.timesteps[:, 1:] > 0).all()
    prediction = torch.randn(2, 16, 3, 4, 6, generator=g, requires_grad=True)
    flow_matching_loss(prediction, inputs).backward()
    assert torch.count_nonzero(prediction.grad[:, :, 0]) == 0
    assert torch.count_nonzero(prediction.grad[:, :, 1:]) > 0


def test_shift_and_distributions():
    s = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(shift_sigmas(s, 12.0), torch.tensor([0.0, 12 * 0.5 / 6.5, 1.0]))
    uniform = sample_sigmas(20000, generator=torch.Generator().manual_seed(0), shift=1.0)
    assert abs(uniform.mean().item() - 0.5) < 0.01
    shifted = sample_sigmas(20000, generator=torch.Generator().manual_seed(0), shift=12.0)
    assert torch.allclose(shifted, shift_sigmas(uniform, 12.0))
    logit = sample_sigmas(20000, generator=torch.Generator().manual_seed(0), distribution="logit_normal", shift=1.0, logit_mean=1.0)
    assert abs(torch.logit(logit).mean().item() - 1.0) < 0.03
