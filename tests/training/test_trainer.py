"""The loop on the tiny model: it learns, resumes bit-exactly, and stops cleanly."""

from __future__ import annotations

import torch

from frametuner.training.trainer import Trainer

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from frametuner.training.checkpoint import list_checkpoints, load_checkpoint

from .helpers import smooth_clip_data, synthetic_data, tiny_config


def run(tmp_path, steps, data_seed=0, **overrides):
    config = tiny_config(tmp_path, **{"max_train_steps": steps, **overrides})
    trainer = Trainer(config, synthetic_data(seed=data_seed, n=3))
    return trainer, trainer.train()


def overfit_losses(tmp_path, **overrides):
    config = tiny_config(tmp_path, max_train_steps=200, **overrides)
    trainer = Trainer(config, smooth_clip_data())
    losses = []
    trainer._log_step = lambda loss, *a, **k: losses.append(loss)
    trainer.train()
    return sum(losses[:10]) / 10, sum(losses[-10:]) / 10


def test_full_finetune_overfits_one_clip(tmp_path):
    start, end = overfit_losses(tmp_path, model_type="full", learning_rate=3e-3)
    assert end < 0.5 * start, (start, end)


def test_full_finetune_resume_is_bitwise(tmp_path):
    straight, _ = run(tmp_path / "a", 6, model_type="full")
    # An interrupted run: 3 steps of a 6-step schedule, then resumed from its checkpoint.
    interrupted = tiny_config(tmp_path / "b", model_type="full", max_train_steps=6, checkpointing_steps=3)
    trainer = Trainer(interrupted, synthetic_data(seed=0, n=3))
    trainer.max_steps = 3  # stop early, as a crash after the step-3 checkpoint would
    trainer.train()
    resumed_config = tiny_config(tmp_path / "b", model_type="full", max_train_steps=6, resume_from_checkpoint="latest")
    resumed = Trainer(resumed_config, synthetic_data(seed=0, n=3))
    resumed.train()
    a, b = straight.trainable_state_dict(), resumed.trainable_state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_i2v_frame0_enters_clean_with_timestep_zero(tmp_path):
    config = tiny_config(tmp_path, model_type="full", max_train_steps=1)
    data = synthetic_data(n=1, num_cond_latents=1)
    trainer = Trainer(config, data)
    seen = {}
    hook = trainer.model.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    batch = next(iter(data.epoch(0)))
    loss = trainer.training_step(batch)
    hook.remove()
    assert torch.equal(seen["hidden_states"][:, :, 0], batch["latents"][:, :, 0])
    assert not torch.equal(seen["hidden_states"][:, :, 1], batch["latents"][:, :, 1])
    assert torch.equal(seen["timestep"][:, 0], torch.zeros(1)) and seen["num_cond_latents"] == 1
    assert loss.dtype == torch.float32


SIGTERM_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from training.helpers import synthetic_data, tiny_config
from frametuner.training.trainer import Trainer
from pathlib import Path
config = tiny_config(Path({tmp!r}), model_type="full", max_train_steps=100000, checkpointing_steps=100000)
Trainer(config, synthetic_data(n=3)).train()
"""


def test_sigterm_saves_a_loadable_checkpoint(tmp_path):
    tests = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": str(Path(tests).parent)}
    process = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT.format(tests=tests, tmp=str(tmp_path))], env=env)
    events = tmp_path / "out" / "events.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (events.exists() and '"event": "step"' in events.read_text()):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    stopped = [e for e in lines if e["event"] == "stopped"]
    assert stopped and stopped[0]["reason"] == "SIGTERM"
    checkpoint = list_checkpoints(tmp_path / "out" / "checkpoints")[-1]
    state = load_checkpoint(checkpoint)
    assert state["state"]["step"] == stopped[0]["step"] >= 1
    assert state["state"]["reason"] == "SIGTERM" and len(state["weights"]) > 0


def test_lora_overfits_one_clip(tmp_path):
    start, end = overfit_losses(tmp_path, model_type="lora", lora_rank=16, learning_rate=3e-3)
    assert end < 0.5 * start, (start, end)


def test_lora_resume_is_bitwise(tmp_path):
    straight, _ = run(tmp_path / "a", 6)
    interrupted = tiny_config(tmp_path / "b", max_train_steps=6, checkpointing_steps=3)
    trainer = Trainer(interrupted, synthetic_data(seed=0, n=3))
    trainer.max_steps = 3
    trainer.train()
    resumed = Trainer(tiny_config(tmp_path / "b", max_train_steps=6, resume_from_checkpoint="latest"), synthetic_data(seed=0, n=3))
    resumed.train()
    a, b = straight.trainable_state_dict(), resumed.trainable_state_dict()
    assert a.keys() == b.keys() and all("lora" in name for name in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_trained_lora_exports_reimport_identically(tmp_path):
    """The upstream/PEFT/ComfyUI files of a trained LoRA, applied to a fresh base model, give
    the trained model's outputs."""
    from frametuner.lora import apply_lora, remove_loras
    from frametuner.models.registry import load_spec

    trainer, result = run(tmp_path, 4, learning_rate=1e-2)
    assert set(result["lora"]) == {"peft", "upstream", "comfyui"}
    trained = trainer.accelerator.unwrap_model(trainer.model).eval()
    spec = load_spec("longcat_video")
    fresh = spec.load_transformer(spec.checkpoint_root("tiny", None), dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(3)
    inputs = (torch.randn(1, 16, 3, 4, 6, generator=g), torch.tensor([600.0]), torch.randn(1, 8, 64, generator=g), torch.ones(1, 8, dtype=torch.int64))
    with torch.no_grad():
        expected = trained(*inputs)
        base = fresh(*inputs)
        assert (expected - base).abs().max() > 1e-4  # the LoRA learned something
        for fmt, path in result["lora"].items():
            apply_lora(fresh, path)
            assert torch.allclose(fresh(*inputs), expected, atol=1e-5, rtol=1e-5), fmt
            remove_loras(fresh)


def test_a_handed_in_model_gets_the_configs_attention_choice(tmp_path):
    """Benchmarks and the server pass their own model: ``attention_implementation`` and
    ``bsa_*`` must reach it as they reach a loaded one (the 720p BSA benchmark once ran
    dense because they did not)."""
    from frametuner.models.registry import load_spec

    model = load_spec("longcat_video").build_transformer(flavour="tiny", device="cpu", dtype=torch.float32)
    config = tiny_config(tmp_path, max_train_steps=1, attention_implementation="bsa", bsa_sparsity=0.75)
    trainer = Trainer(config, synthetic_data(seed=0, n=1), model=model)
    settings = trainer.accelerator.unwrap_model(trainer.model).attention_settings
    assert settings.implementation == "bsa"
    assert settings.bsa_params["sparsity"] == 0.75


def test_caption_dropout_pads_an_unpadded_empty_prompt_to_the_batch(tmp_path):
    """Cached data hands out the empty prompt's real tokens only ([n, C], padded per batch
    elsewhere). A dropped caption must become exactly those tokens followed by zero padding,
    masked out: assigned unpadded, the single end token broadcast over all L rows."""
    trainer = Trainer(tiny_config(tmp_path, max_train_steps=1), synthetic_data(seed=0, n=2))
    channels = 64
    empty = torch.full((1, channels), 3.0)
    trainer.data.empty_text = lambda: (empty, torch.ones(1, dtype=torch.int64))
    text = torch.randn(2, 6, channels)
    mask = torch.ones(2, 6, dtype=torch.int64)
    dropped, dropped_mask = trainer._drop_captions(text, mask, torch.tensor([True, False]))
    assert torch.equal(dropped[0, 0], empty[0])
    assert torch.equal(dropped[0, 1:], torch.zeros(5, channels))
    assert dropped_mask[0].tolist() == [1, 0, 0, 0, 0, 0]
    assert torch.equal(dropped[1], text[1]) and dropped_mask[1].tolist() == [1] * 6


# ------------------------------------------------------------------ the conditioning mix (issue 21)
def test_a_vc_only_mix_keeps_the_conditioning_frames_clean_and_out_of_the_loss(tmp_path):
    from frametuner.config.conditioning import ConditioningMix

    config = tiny_config(tmp_path, model_type="full", max_train_steps=1)
    # 5 conditioning frames are K = 1 + (5 - 1) // 4 = 2 latent frames of the 3.
    data = synthetic_data(n=1, conditioning=ConditioningMix(vc=1.0, vc_cond_frames=[5]))
    trainer = Trainer(config, data)
    seen = {}

    def keep_output(module, args, kwargs, output):
        output.retain_grad()
        seen.update(kwargs, output=output)

    hook = trainer.model.register_forward_hook(keep_output, with_kwargs=True)
    batch = next(iter(data.epoch(0)))
    loss = trainer.training_step(batch)
    hook.remove()
    loss.backward()
    assert seen["num_cond_latents"] == 2 and trainer.conditioning_counts == {"vc": 1}
    assert torch.equal(seen["hidden_states"][:, :, :2], batch["latents"][:, :, :2])  # the clip's own first frames, clean
    assert torch.equal(seen["timestep"][:, :2], torch.zeros(1, 2)) and bool((seen["timestep"][:, 2] > 0).all())
    grad = seen["output"].grad
    assert torch.equal(grad[:, :, :2], torch.zeros_like(grad[:, :, :2]))  # (a) no loss on conditioning frames
    assert bool((grad[:, :, 2:] != 0).all())
    # The loss is the MSE over the noised frame only, toward x0 - noise (recomputed here).
    x0 = batch["latents"]
    noise_free = seen["hidden_states"][:, :, 2:]  # (1 - s) x0 + s noise
    s = seen["timestep"][0, 2] / 1000
    noise = (noise_free - (1 - s) * x0[:, :, 2:]) / s
    expected = (seen["output"][:, :, 2:].detach() - (x0[:, :, 2:] - noise)).square().mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)


def test_an_i2v_sample_with_an_image_gets_it_in_frame_0_and_a_t2v_sample_keeps_its_own(tmp_path):
    from frametuner.config.conditioning import ConditioningMix

    trainer = Trainer(tiny_config(tmp_path, model_type="full", max_train_steps=1), synthetic_data(n=1))
    batch = next(iter(synthetic_data(n=1).epoch(0)))
    image = torch.full_like(batch["latents"][:, :, :1], 7.0)
    seen = {}
    hook = trainer.model.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    trainer.training_step({**batch, "conditioning": ConditioningMix.only("i2v"), "image_latents": image})
    assert torch.equal(seen["hidden_states"][:, :, :1], image) and seen["num_cond_latents"] == 1
    trainer.training_step({**batch, "conditioning": ConditioningMix.only("t2v"), "image_latents": image})
    hook.remove()
    assert seen["num_cond_latents"] == 0 and not torch.equal(seen["hidden_states"][:, :, :1], image)


MIXED = {"t2v": 0.4, "i2v": 0.3, "vc": 0.3, "vc_cond_frames": [5]}


def test_mixed_conditioning_resume_is_bitwise_and_draws_the_same_modes(tmp_path, monkeypatch):
    """(b) of issue 21: batches of 2 mix modes (one DiT call per K); an interrupted run resumed
    from its step-3 checkpoint draws the modes and ends with the weights of a straight run."""
    from frametuner.config.conditioning import ConditioningMix
    from frametuner.training import trainer as trainer_module

    draws: list = []
    real = trainer_module.draw_conditioning
    monkeypatch.setattr(trainer_module, "draw_conditioning", lambda *a, **k: draws.append(real(*a, **k)) or draws[-1])

    def data():
        return synthetic_data(seed=0, n=4, batch_size=2, conditioning=ConditioningMix(**MIXED))

    straight = Trainer(tiny_config(tmp_path / "a", max_train_steps=6), data())
    straight.train()
    straight_draws, draws[:] = list(draws), []
    interrupted = Trainer(tiny_config(tmp_path / "b", max_train_steps=6, checkpointing_steps=3), data())
    interrupted.max_steps = 3
    interrupted.train()
    resumed = Trainer(tiny_config(tmp_path / "b", max_train_steps=6, resume_from_checkpoint="latest"), data())
    resumed.train()
    assert draws == straight_draws and len(draws) == 6
    done = [json.loads(line) for line in (tmp_path / "a" / "out" / "events.jsonl").read_text().splitlines()][-1]
    assert done["event"] == "done" and sum(done["conditioning"].values()) == 12  # 6 steps x 2 samples, by mode
    modes = [[item.mode for item in plan] for plan in draws]
    assert any(len(set(m)) > 1 for m in modes), modes  # some batch really mixes modes
    a, b = straight.trainable_state_dict(), resumed.trainable_state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
