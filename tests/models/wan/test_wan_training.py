"""What the trainer hands Wan's DiT in a step, against Wan's documented objective.

Wan 2.1 (its own code, diffusers' pipeline and scheduler): ``x_s = (1 - s) x0 + s noise``,
the DiT called at timestep ``1000 s`` (one per sample), trained toward the velocity
``noise - x0``; ``s`` is shifted with flow shift 3, ``s' = 3 s / (1 + 2 s)``; text is
umT5's embeddings zero-padded to 512 tokens, with no mask. The expected values are
computed here from those formulas and the trainer's documented draws (one generator seeded
with ``config.seed``: the uniform ``s`` for the batch, then one int64 noise seed per sample).
The DiT call is captured with a forward pre-hook (keyword arguments).
"""

from __future__ import annotations

import pytest
import torch

from tests.training.helpers import synthetic_data, tiny_config

WAN_SHIFT = 3.0
TEXT_LENGTH = 512


def documented_draws(seed: int, batch: int, shape: tuple[int, ...]):
    generator = torch.Generator().manual_seed(seed)
    s = torch.rand(batch, generator=generator, dtype=torch.float32)
    sigmas = WAN_SHIFT * s / (1 + (WAN_SHIFT - 1) * s)
    seeds = torch.randint(0, 2**63 - 1, (batch,), generator=generator)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(v)), dtype=torch.float32) for v in seeds.tolist()])
    return sigmas, noise


def first_step(tmp_path):
    from frametuner.training.trainer import Trainer

    config = tiny_config(tmp_path, model_family="wan", model_flavour="tiny", max_train_steps=1, train_batch_size=2, seed=5)
    data = synthetic_data(n=2, batch_size=2, seed=3)
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
        dit.register_forward_pre_hook(
            lambda module, args, kwargs: calls.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}),
            with_kwargs=True,
        ),
        dit.register_forward_hook(lambda module, args, output: outputs.append(output[0].detach().clone())),
    ]
    trainer._log_step = lambda loss, *args, **kwargs: losses.append(loss)
    try:
        trainer.train()
    finally:
        for hook in hooks:
            hook.remove()
    assert len(handed) == 1 and len(calls) == 1 and len(losses) == 1, (len(handed), len(calls), len(losses))
    return config, handed[0], calls[0], outputs[0], losses[0]


def test_wan_training_step_follows_the_documented_objective(tmp_path):
    config, batch, seen, prediction, loss = first_step(tmp_path)
    x0 = batch["latents"].float()
    b = x0.shape[0]
    sigmas, noise = documented_draws(config.seed, b, tuple(x0.shape[1:]))
    s = sigmas.view(-1, 1, 1, 1, 1)

    torch.testing.assert_close(seen["hidden_states"], (1 - s) * x0 + s * noise, atol=1e-5, rtol=1e-5)
    assert seen["timestep"].shape == (b,)
    torch.testing.assert_close(seen["timestep"].float(), 1000.0 * sigmas, atol=1e-3, rtol=1e-6)
    # Text: the valid tokens, then zero rows up to 512; no mask goes to the DiT.
    text, mask = batch["text"], batch["text_mask"]
    expected_text = torch.zeros(b, TEXT_LENGTH, text.shape[-1])
    expected_text[:, : text.shape[1]] = text * mask[..., None]
    assert torch.equal(seen["encoder_hidden_states"], expected_text)
    assert "encoder_attention_mask" not in seen

    target = noise - x0  # Wan's velocity
    expected_loss = (prediction.float() - target).square().mean().item()
    flipped_loss = (prediction.float() + target).square().mean().item()
    assert abs(expected_loss - flipped_loss) > 1e-3 * expected_loss
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    # The shift moved the draw: a trainer using LongCat's 12 or no shift fails above.
    unshifted = torch.rand(b, generator=torch.Generator().manual_seed(config.seed))
    assert (sigmas - unshifted).abs().min() > 0.02
