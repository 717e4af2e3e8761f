"""Validation videos while training the image-to-video Wan (tiny-i2v).

Its DiT always reads an image (mask + condition latents as extra input channels, CLIP
features), so validation renders each clip of ``eval_dataset_id`` from the clip's cached
training conditioning (the ConditioningCache entry training reads), its caption and the
validation seed. Oracle: ``frametuner.sampling.denoise`` called by hand with that entry,
that text and that seed. A plain validation prompt gives no image: refused up front.
"""

from __future__ import annotations

import json

import pytest
import torch

from .test_wan_i2v_training import FRAMES, HEIGHT, WIDTH, _config


@pytest.mark.slow
def test_i2v_validation_renders_eval_clips_from_their_cached_conditioning(tmp_path, monkeypatch):
    import frametuner.sampling.pipeline as sampling_pipeline
    from frametuner.cache.entries import pad_text
    from frametuner.cache.run import open_config_caches, open_config_conditioning_cache
    from frametuner.data import scan_datasets
    from frametuner.models.registry import load_spec
    from frametuner.sampling import denoise
    from frametuner.sampling.pipeline import initial_noise
    from frametuner.training.pipeline import train

    rendered = []  # (step 0 first) the latents each validation video was decoded from

    def spy(*args, **kwargs):
        latents = denoise(*args, **kwargs)
        rendered.append(latents.clone())
        return latents

    monkeypatch.setattr(sampling_pipeline, "denoise", spy)
    config = _config(
        tmp_path, max_train_steps=1, train_batch_size=1, validation_steps=1000, validation_using_datasets=True,
        eval_dataset_id="demo", validation_num_inference_steps=2, validation_seed=17,
    )
    assert train(config) == 0

    out = tmp_path / "out"
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    videos = [e for e in events if e["event"] == "validation"]
    samples = scan_datasets(config).dataset_samples("demo")
    assert len(samples) >= 2 and len(rendered) == len(videos) == 2 * len(samples)  # step 0 and the end
    assert [(e["step"], e["prompt"]) for e in videos[: len(samples)]] == [(0, s.caption) for s in samples]
    assert all((out / e["video"]).is_file() for e in videos)
    record = json.loads((out / "validation" / "step000000_prompt00.json").read_text())
    assert record["settings"]["image_to_video"] is True and record["settings"]["num_frames"] == FRAMES

    # Oracle: denoise by hand with the same cache entries, text and seed (LoRA B = 0 at step 0: the base DiT).
    spec = load_spec("wan")
    model = spec.load_transformer(spec.checkpoint_root("tiny-i2v", None), dtype=torch.float32)
    text_cache, _ = open_config_caches(config)
    entries = open_config_conditioning_cache(config)
    negative = text_cache.load(config.validation_negative_prompt)
    for sample, latents in zip(samples[:2], rendered):
        entry = entries.load(sample)
        text = text_cache.load(sample.caption)
        length = max(text.shape[0], negative.shape[0])
        (embeds, mask), (negative_embeds, negative_mask) = pad_text(text, length), pad_text(negative, length)
        noise = initial_noise((1, *spec.geometry.latent_shape(FRAMES, HEIGHT, WIDTH)), 17)
        expected = denoise(
            model, noise, embeds[None], mask[None], negative_embeds[None], negative_mask[None], steps=2,
            conditioning={"condition": entry["condition"][None], "image_embeds": entry["image_embeds"][None]},
        )
        assert latents.shape == expected.shape
        torch.testing.assert_close(latents, expected, atol=1e-6, rtol=0)
    # The two clips differ in image and caption: their videos differ.
    assert (rendered[0] - rendered[1]).abs().max() > 1e-3


def test_i2v_validation_prompt_without_an_image_is_refused_by_the_config(tmp_path, capsys):
    from frametuner.cli import main

    with pytest.raises(ValueError, match="validation_using_datasets: true and eval_dataset_id") as error:
        _config(tmp_path, validation_prompt="a red ball rolls")
    assert "'validation_prompt'" in str(error.value) and "samples only from an input image" in str(error.value)
    # `frametuner config check` (and so the web UI's Check, which loads through the same schema) says it too.
    config = json.loads(_config(tmp_path).model_dump_json())
    path = tmp_path / "i2v.json"
    path.write_text(json.dumps({**config, "validation_prompt_file": str(tmp_path / "prompts.txt")}))
    assert main(["config", "check", str(path)]) != 0
    assert "'validation_prompt_file'" in capsys.readouterr().err
    # With the eval clips, or a text-to-video flavour, it is accepted.
    _config(tmp_path, validation_prompt="a red ball rolls", validation_using_datasets=True, eval_dataset_id="demo")
    _config(tmp_path, model_flavour="tiny", validation_prompt="a red ball rolls")


def test_i2v_validation_prompt_without_an_image_is_refused_before_caching(tmp_path):
    """The trainer's own check asks the checkpoint (a local path may hold an image-to-video
    model whatever the flavour's name): it refuses before anything is cached."""
    from frametuner.config import ConfigError
    from frametuner.training.pipeline import check_validation_setup, train

    config = _config(tmp_path).model_copy(update={"validation_prompt": "a red ball rolls"})  # past the schema's check
    with pytest.raises(ConfigError, match="validation_using_datasets: true and eval_dataset_id") as error:
        train(config)
    assert "validation_prompt" in str(error.value) and "samples only from an input image" in str(error.value)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()  # refused up front
    # With the eval clips (or no prompt) it is accepted: the same config check passes.
    assert check_validation_setup(_config(tmp_path, validation_prompt="a red ball rolls", validation_using_datasets=True,
                                          eval_dataset_id="demo")) is not None
    assert check_validation_setup(_config(tmp_path)) is not None
    assert check_validation_setup(_config(tmp_path, model_flavour="tiny", validation_prompt="a red ball rolls")) is None
