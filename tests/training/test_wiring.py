"""What the trainer hands the DiT in a step, against the documented objective (issue 19 point 10).

``../shared/docs/longcat_video.md`` (training objective): sigmas are drawn uniformly and
shifted with shift 12, ``s' = 12 s / (1 + 11 s)``; the DiT sees ``x_s = (1 - s) x0 + s noise``
at timestep ``1000 s`` for every noised latent frame; it is trained toward ``x0 - noise``
(its raw output is the negative velocity); for image-to-video latent frame 0 is the clean
image latent at timestep 0 and is left out of the loss.

The expected values are computed here from those formulas, not from the trainer's
helpers. The random draws are the trainer's documented ones: one ``torch.Generator``
seeded with ``config.seed`` makes, per step, the uniform ``s`` for the global batch, then
one int64 noise seed per sample; each sample's noise is ``randn`` from its own seed. What
reaches the DiT is captured with a forward pre-hook on the DiT (its keyword arguments) and
the prediction with a forward hook; the loss is the one the trainer logs for the step.
A trainer drawing with shift 1, or training toward ``noise - x0``, fails here.
"""

from __future__ import annotations

import pytest
import torch

from frametuner.training.trainer import Trainer

from .helpers import synthetic_data, tiny_config

DOCUMENTED_SHIFT = 12.0
TIMESTEP_SCALE = 1000.0


def documented_draws(seed: int, batch: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    s = torch.rand(batch, generator=generator, dtype=torch.float32)
    sigmas = DOCUMENTED_SHIFT * s / (1 + (DOCUMENTED_SHIFT - 1) * s)
    seeds = torch.randint(0, 2**63 - 1, (batch,), generator=generator)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32) for seed in seeds.tolist()])
    return sigmas, noise


def first_step(tmp_path, num_cond_latents: int, **overrides):
    """Train one step; returns (batch, DiT keyword arguments, DiT output, logged loss)."""
    config = tiny_config(tmp_path, max_train_steps=1, train_batch_size=2, seed=5, **overrides)
    data = synthetic_data(n=2, batch_size=2, num_cond_latents=num_cond_latents, seed=3)
    handed, calls, outputs, losses = [], [], [], []
    epoch = data.epoch

    def recording_epoch(number):
        for batch in epoch(number):
            handed.append(batch)
            yield batch

    data.epoch = recording_epoch
    trainer = Trainer(config, data)
    dit = trainer.accelerator.unwrap_model(trainer.model)
    hooks = [
        dit.register_forward_pre_hook(lambda module, args, kwargs: calls.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}), with_kwargs=True),
        dit.register_forward_hook(lambda module, args, output: outputs.append(output.detach().clone())),
    ]
    trainer._log_step = lambda loss, *args, **kwargs: losses.append(loss)
    try:
        trainer.train()
    finally:
        for hook in hooks:
            hook.remove()
    assert len(handed) == 1 and len(calls) == 1 and len(losses) == 1, (len(handed), len(calls), len(losses))
    return config, handed[0], calls[0], outputs[0], losses[0]


@pytest.mark.parametrize("num_cond_latents", [0, 1], ids=["t2v", "i2v"])
def test_the_dit_sees_the_documented_noisy_latents_timesteps_and_loss(tmp_path, num_cond_latents):
    config, batch, seen, prediction, loss = first_step(tmp_path, num_cond_latents)
    x0 = batch["latents"].float()
    b, _, frames = x0.shape[:3]
    k = num_cond_latents
    sigmas, noise = documented_draws(config.seed, b, tuple(x0.shape[1:]))
    # Shift 12 moves these draws far from their unshifted values: shift 1 cannot pass below.
    unshifted = torch.rand(b, generator=torch.Generator().manual_seed(config.seed))
    assert (sigmas - unshifted).abs().min() > 0.05

    expected = (1 - sigmas.view(-1, 1, 1, 1, 1)) * x0 + sigmas.view(-1, 1, 1, 1, 1) * noise
    expected[:, :, :k] = x0[:, :, :k]  # conditioning frames enter clean
    timesteps = (TIMESTEP_SCALE * sigmas)[:, None].expand(b, frames).clone()
    timesteps[:, :k] = 0.0

    # Noisy latents: frame for frame what the objective says; conditioning frames bit-exact.
    assert seen["hidden_states"].shape == x0.shape
    torch.testing.assert_close(seen["hidden_states"], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(seen["hidden_states"][:, :, :k], x0[:, :, :k])
    # Per-frame timesteps in model units (1000 sigma), 0 on conditioning frames.
    timestep = seen["timestep"].float()
    timestep = timestep[:, None].expand(b, frames) if timestep.dim() == 1 else timestep
    torch.testing.assert_close(timestep, timesteps, atol=1e-3, rtol=1e-6)
    assert int(seen.get("num_cond_latents", 0) or 0) == k
    assert torch.equal(seen["encoder_hidden_states"], batch["text"]) and torch.equal(seen["encoder_attention_mask"], batch["text_mask"])

    # The loss: MSE between the DiT's output and x0 - noise over the noised frames only.
    target = x0 - noise
    expected_loss = (prediction[:, :, k:].float() - target[:, :, k:]).square().mean().item()
    flipped_loss = (prediction[:, :, k:].float() + target[:, :, k:]).square().mean().item()
    assert abs(expected_loss - flipped_loss) > 1e-3 * expected_loss  # the test can tell the two signs apart
    assert loss == pytest.approx(expected_loss, rel=1e-5)

