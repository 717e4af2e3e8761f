"""``frametuner cache --config``: samples and validation prompts cached."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import frametuner.data
from frametuner.cache import CachedDataset
from frametuner.cache.run import open_config_caches
from frametuner.cli import main
from frametuner.config import load_config

from .helpers import SyntheticPixels, make_sample, write_sources


@pytest.fixture
def config_file(tmp_path):
    (tmp_path / "prompts.txt").write_text("a fox in the snow\n\n  a horse on a beach  \n", encoding="utf-8")
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "model_flavour": "tiny",
                "output_dir": str(tmp_path / "out"),
                "validation_prompt": "a red car",
                "validation_prompt_file": "prompts.txt",  # relative to the config file
                "validation_negative_prompt": "blurry",
            }
        )
    )
    return path


def test_cache_command_caches_samples_and_validation_prompts(config_file, tmp_path, monkeypatch):
    sources = write_sources(tmp_path / "media", 2)
    samples = [make_sample(path, caption) for path, caption in zip(sources, ["a cat", "a dog"])]
    pixels = SyntheticPixels()
    seen = []
    monkeypatch.setattr(frametuner.data, "scan_datasets", lambda config: seen.append(config) or SimpleNamespace(all_samples=samples))
    monkeypatch.setattr(frametuner.data, "load_clip", pixels)
    monkeypatch.setattr(frametuner.data, "load_conditioning_image", pixels.image)

    cache_dir = tmp_path / "elsewhere"
    assert main(["cache", "--config", str(config_file), "--cache_dir", str(cache_dir)]) == 0
    assert seen[0].cache_dir == str(cache_dir)

    config = load_config(config_file, {"cache_dir": str(cache_dir)})
    text_cache, latent_cache = open_config_caches(config)
    for prompt in ["a cat", "a dog", "a red car", "a fox in the snow", "a horse on a beach", "blurry", ""]:
        text_cache.check(prompt)  # raises if absent or corrupt
    assert len(list((cache_dir / "text").glob("*.safetensors"))) == 7
    assert text_cache.load("a red car").dtype == torch.bfloat16  # stored in the training dtype (mixed_precision bf16)

    dataset = CachedDataset(samples, text_cache=text_cache, latent_cache=latent_cache)
    batch = dataset.collate([dataset[0], dataset[1]])
    assert batch["latents"].shape == (2, 16, 2, 2, 4) and batch["text"].dtype == torch.bfloat16
    assert batch["text_mask"].shape == (2, 512)
