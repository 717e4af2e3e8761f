"""Wan shares frametuner's umT5 and Wan-VAE caches with LongCat-Video.

Cache keys name the encoder by what it computes (its files, weights included, its dtype and
settings). The tiny Wan and tiny LongCat checkpoints ship identical text encoder, tokenizer
and VAE files, so a Wan run after a LongCat run on the same clips (cut to the same buckets)
encodes nothing; a Wan
checkpoint whose VAE weights differ (same file size) re-encodes every latent instead of
reusing LongCat's.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from frametuner.demo import DEMO_DATASETS, write_demo_clips

pytestmark = pytest.mark.slow


def _config(tmp_path, family: str, **overrides):
    from frametuner.config import TrainConfig

    values = dict(
        model_family=family,
        model_flavour="tiny",
        mixed_precision="no",
        report_to="none",
        output_dir=str(tmp_path / f"out-{family}"),
        cache_dir=str(tmp_path / "cache"),
        data_backend_config=str(tmp_path / "datasets.json"),
        validation_prompt="a red ball bouncing on a wooden floor",
        # The same bucket grid for both families (LongCat's default is 64 px, Wan's 16): the same crops.
        aspect_bucket_alignment=16,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_wan_after_longcat_reuses_every_cache_entry_and_a_different_vae_does_not(tmp_path):
    from safetensors.torch import load_file, save_file

    from frametuner.cache.run import run_cache
    from frametuner.models.wan.tiny import ensure_tiny_checkpoint

    write_demo_clips(tmp_path / "clips", frames=9, height=32, width=48)
    datasets = [dict(DEMO_DATASETS[0], instance_data_dir=str(tmp_path / "clips"), resolution="32x48", repeats=1)]
    (tmp_path / "datasets.json").write_text(json.dumps(datasets))

    longcat = run_cache(_config(tmp_path, "longcat_video"), progress=False)
    assert longcat.latents_encoded == 4 and longcat.text_encoded > 0 and not longcat.failed

    wan = run_cache(_config(tmp_path, "wan"), progress=False)
    assert (wan.text_encoded, wan.latents_encoded) == (0, 0), wan.summary()
    assert (wan.text_reused, wan.latents_reused) == (longcat.text_encoded, longcat.latents_encoded)

    # A Wan checkpoint with other VAE weights of the same shapes (so the same file size).
    other = tmp_path / "other-wan"
    shutil.copytree(ensure_tiny_checkpoint("tiny"), other)
    vae_file = other / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(vae_file)
    name = next(key for key, value in tensors.items() if value.dim() == 5)
    tensors[name] = tensors[name] + 0.01 * torch.ones_like(tensors[name])
    save_file(tensors, vae_file, metadata={"format": "pt"})

    changed = run_cache(_config(tmp_path, "wan", pretrained_model_name_or_path=str(other)), progress=False)
    assert changed.latents_encoded == 4 and changed.latents_reused == 0, changed.summary()
    assert changed.text_encoded == 0  # same umT5: text still shared
