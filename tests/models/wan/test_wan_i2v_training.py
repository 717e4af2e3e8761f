"""Training the image-to-video Wan (tiny-i2v), against diffusers' ``WanImageToVideoPipeline``.

What the pipeline does per denoising step (its ``prepare_latents`` / ``encode_image`` /
``__call__``): the DiT reads ``cat([latents, condition], dim=1)`` where ``condition`` is 4
mask channels (1 on the first latent frame) then the normalised VAE latents of
``[image, 0, 0, ...]``, with one timestep per sample on every latent frame (no clean
frame), and cross-attends to the image's CLIP features (``encoder_hidden_states_image``).
A training step must hand the DiT exactly that, with the noisy latents of Wan's objective
(``(1 - s) x0 + s noise``) in the first 16 channels and the velocity ``noise - x0`` over
every frame as the target. The condition and features come from the cache (one pass at
caching time); the oracle here recomputes them with the pipeline's own methods from the
clip's first frame (the conditioning mix ``{"i2v": 1.0}`` on clips without an image).
"""

from __future__ import annotations

import json

import pytest
import torch

from frametuner.demo import DEMO_DATASETS, write_demo_clips

from .helpers import tiny_pipeline
from .test_wan_training import documented_draws

FRAMES, HEIGHT, WIDTH = 9, 32, 48


def _config(tmp_path, **overrides):
    from frametuner.config import TrainConfig

    write_demo_clips(tmp_path / "clips", frames=FRAMES, height=HEIGHT, width=WIDTH)
    datasets = [dict(DEMO_DATASETS[0], instance_data_dir=str(tmp_path / "clips"), resolution=f"{HEIGHT}x{WIDTH}", repeats=1)]
    (tmp_path / "datasets.json").write_text(json.dumps(datasets))
    values = dict(
        model_family="wan",
        model_flavour="tiny-i2v",
        mixed_precision="no",
        report_to="none",
        output_dir=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"),
        data_backend_config=str(tmp_path / "datasets.json"),
        aspect_bucket_alignment=16,
        conditioning={"i2v": 1.0},
        max_train_steps=1,
        checkpointing_steps=1000,
        validation_steps=1000,
        train_batch_size=2,
        learning_rate=1e-3,
        lora_rank=4,
        seed=5,
    )
    values.update(overrides)
    return TrainConfig(**values)


def _pipeline_oracle(pipe, pixels: torch.Tensor):
    """``condition [1, 20, T, h, w]`` and ``image_embeds [1, N, D]`` as WanImageToVideoPipeline builds them."""
    from PIL import Image

    image = Image.fromarray(pixels.numpy())
    with torch.no_grad():
        image_embeds = pipe.encode_image(image, device=torch.device("cpu"))
        processed = pipe.video_processor.preprocess(image, height=HEIGHT, width=WIDTH).to(torch.float32)
        noise, condition = pipe.prepare_latents(
            processed, 1, 16, HEIGHT, WIDTH, FRAMES, torch.float32, torch.device("cpu"), None, None
        )
    return condition, image_embeds


@pytest.mark.slow
def test_i2v_training_step_hands_the_dit_the_pipeline_inputs(tmp_path):
    from frametuner.cache.run import open_config_caches, run_cache
    from frametuner.data import scan_datasets
    from frametuner.data.media import load_clip
    from frametuner.training.pipeline import CachedTrainingData
    from frametuner.training.trainer import Trainer

    config = _config(tmp_path)
    report = run_cache(config, progress=False)
    assert report.conditioning_encoded == 4 and not report.failed, report.summary()
    assert run_cache(config, progress=False).conditioning_reused == 4  # a rerun encodes nothing

    scan = scan_datasets(config, summary=False)
    data = CachedTrainingData.from_scan(scan, config)
    batch = next(iter(data.epoch(0)))
    trainer = Trainer(config, data)
    dit = trainer.accelerator.unwrap_model(trainer.model)
    calls, outputs = [], []
    hooks = [
        dit.register_forward_pre_hook(
            lambda module, args, kwargs: calls.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}),
            with_kwargs=True,
        ),
        dit.register_forward_hook(lambda module, args, output: outputs.append(output[0].detach().clone())),
    ]
    try:
        loss = trainer.training_step(batch).item()
    finally:
        for hook in hooks:
            hook.remove()
    assert len(calls) == 1
    seen, prediction = calls[0], outputs[0]

    # Which clip each batch row is (its cached latents), and the pipeline's conditioning of its first frame.
    _, latent_cache = open_config_caches(config)
    samples = list(scan.samples)
    pipe, _ = tiny_pipeline("tiny-i2v")
    x0 = batch["latents"].float()
    b = x0.shape[0]
    assert b == 2
    conditions, embeds = [], []
    for row in range(b):
        sample = next(s for s in samples if torch.equal(latent_cache.load(s)["latents"], batch["latents"][row]))
        condition, image_embeds = _pipeline_oracle(pipe, load_clip(sample)[0])
        conditions.append(condition[0])
        embeds.append(image_embeds[0])
    condition, image_embeds = torch.stack(conditions), torch.stack(embeds)

    sigmas, noise = documented_draws(config.seed, b, tuple(x0.shape[1:]))
    s = sigmas.view(-1, 1, 1, 1, 1)
    hidden = seen["hidden_states"]
    assert hidden.shape[1] == 16 + 4 + 16 == dit.config.in_channels
    # All frames noised, frame 0 included: the image enters through the channels only.
    torch.testing.assert_close(hidden[:, :16], (1 - s) * x0 + s * noise, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[:, 16:], condition, atol=1e-5, rtol=1e-5)
    assert torch.equal(hidden[:, 16:20, 0], torch.ones_like(hidden[:, 16:20, 0])) and not hidden[:, 16:20, 1:].any()
    torch.testing.assert_close(seen["encoder_hidden_states_image"], image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen["timestep"].float(), 1000.0 * sigmas, atol=1e-3, rtol=1e-6)

    target = noise - x0  # Wan's velocity, over every frame
    assert loss == pytest.approx((prediction.float() - target).square().mean().item(), rel=1e-5)
    assert abs(loss - (prediction.float()[:, :, 1:] - target[:, :, 1:]).square().mean().item()) > 1e-4 * loss


@pytest.mark.slow
def test_tiny_i2v_trains_and_exports_a_lora_the_i2v_pipeline_reads(tmp_path):
    from PIL import Image

    from frametuner.training.pipeline import train

    config = _config(tmp_path, max_train_steps=3, train_batch_size=1, lora_export_formats=["comfyui"])
    assert train(config) == 0
    out = tmp_path / "out"
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 3 and all(torch.isfinite(torch.tensor(e["loss"])) for e in steps)
    done = next(e for e in events if e["event"] == "done")
    assert done["conditioning"] == {"i2v": 3}

    pipe, _ = tiny_pipeline("tiny-i2v")
    pixels = torch.randint(0, 256, (HEIGHT, WIDTH, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    latents = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(2))
    kwargs = dict(
        image=Image.fromarray(pixels.numpy()), prompt_embeds=torch.randn(1, 8, 64, generator=torch.Generator().manual_seed(3)),
        num_inference_steps=2, guidance_scale=1.0, height=HEIGHT, width=WIDTH, num_frames=FRAMES, output_type="latent",
    )
    plain = pipe(latents=latents.clone(), **kwargs).frames
    pipe.load_lora_weights(str(out / done["lora"]["comfyui"]))
    trained = pipe(latents=latents.clone(), **kwargs).frames
    assert (trained - plain).abs().max() > 1e-6  # the trained LoRA loads and moves the output


def test_wan_refuses_what_it_cannot_train(tmp_path):
    """A text-to-video Wan has no image conditioning to train; the I2V one needs it on every
    sample; continuation does not exist for Wan (config check and trainer)."""
    from frametuner.models.registry import load_spec

    spec = load_spec("wan")
    x0 = torch.zeros(1, 16, 3, 2, 2)
    with pytest.raises(ValueError, match="continuation"):
        spec.training_inputs(x0, x0, torch.tensor([0.5]), num_cond_latents=2)
    inputs = spec.training_inputs(x0, torch.randn_like(x0), torch.tensor([0.5]), num_cond_latents=1)
    assert inputs.num_cond_latents.tolist() == [0] and inputs.loss_mask.all()  # no clean frame, every frame in the loss
    t2v = spec.build_transformer(flavour="tiny", device="cpu", dtype=torch.float32)
    text, mask = torch.zeros(1, 4, 64), torch.ones(1, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="text-to-video Wan cannot train image-to-video"):
        spec.training_forward(t2v, inputs, text, mask)
    i2v = spec.build_transformer(flavour="tiny-i2v", device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="cached image conditioning"):
        spec.training_forward(i2v, inputs, text, mask)
    with pytest.raises(ValueError, match="image-to-video samples only"):
        spec.training_forward(i2v, spec.training_inputs(x0, x0, torch.tensor([0.5])), text, mask)


def test_config_check_lets_wan_train_an_i2v_mix_but_not_continuation(tmp_path):
    from frametuner.config import validate_dataset_list

    assert validate_dataset_list(_config(tmp_path), frame_stride=4) == []
    [problem] = validate_dataset_list(_config(tmp_path, conditioning={"i2v": 0.5, "vc": 0.5, "vc_cond_frames": [5]}), frame_stride=4)
    assert problem.field == "conditioning" and "clean-frame conditioning" in problem.message
