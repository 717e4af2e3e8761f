"""umT5 text encoding and the Wan VAE wrapper, against the reference fixtures and transformers itself."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from frametuner.models.longcat_video import VideoVAE, clean_prompt, denormalise_latents, normalise_latents
from frametuner.models.longcat_video.tiny import TINY_DIT_CONFIG, ensure_tiny_checkpoint
from frametuner.models.registry import load_spec

from ..conftest import REFERENCE, assert_close


@pytest.fixture
def spec():
    return load_spec("longcat_video")


@pytest.fixture
def tiny_root(spec):
    return spec.checkpoint_root("tiny", None)


def test_clean_prompt_reproduces_every_reference_pair():
    pairs = json.loads((REFERENCE / "prompt_clean.json").read_text(encoding="utf-8"))
    assert len(pairs) >= 10
    for pair in pairs:
        assert clean_prompt(pair["input"]) == pair["output"], pair["input"]


def test_normalisation_matches_reference(cases):
    mean, std = cases["norm.latents_mean"], cases["norm.latents_std"]
    normalised = normalise_latents(cases["norm.input"], mean, std)
    assert_close(normalised, cases["norm.output"], atol=1e-6, rtol=0)
    assert_close(denormalise_latents(cases["norm.output"], mean, std), cases["norm.denormalize_output"], atol=1e-6, rtol=0)
    # Per clip [16, T, h, w] (how the cache stores latents) gives the same numbers.
    assert_close(normalise_latents(cases["norm.input"][1], mean, std), cases["norm.output"][1], atol=1e-6, rtol=0)


def test_tiny_vae_uses_wan21_statistics_and_reference_formula(spec, tiny_root, cases):
    vae = spec.load_vae(tiny_root)
    assert torch.equal(vae.latents_mean, cases["norm.latents_mean"])
    assert torch.equal(vae.latents_std, cases["norm.latents_std"])
    assert_close(vae.normalise(cases["norm.input"]), cases["norm.output"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("frames, height, width", [(1, 32, 48), (5, 32, 48), (93, 16, 16)])
def test_tiny_vae_encode_decode_shapes(spec, tiny_root, frames, height, width):
    vae = spec.load_vae(tiny_root)
    pixels = torch.randint(0, 256, (frames, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(frames))
    latents = vae.encode(pixels)
    assert latents.dtype == torch.float32
    assert tuple(latents.shape) == spec.geometry.latent_shape(frames, height, width) == (16, 1 + (frames - 1) // 4, height // 8, width // 8)
    video = vae.decode(latents)
    assert video.dtype == torch.uint8 and tuple(video.shape) == (frames, height, width, 3)


def test_vae_encode_is_the_normalised_posterior_mean(spec, tiny_root):
    """Oracle: diffusers' own encode, posterior mode, then the reference normalisation."""
    vae = spec.load_vae(tiny_root)
    pixels = torch.randint(0, 256, (5, 16, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    video = pixels.permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0
    with torch.no_grad():
        mean = vae.model.encode(video).latent_dist.mean[0]
    expected = (mean - vae.latents_mean.view(-1, 1, 1, 1)) * (1.0 / vae.latents_std.view(-1, 1, 1, 1))
    assert_close(vae.encode(pixels), expected, atol=1e-6, rtol=0)
    assert torch.equal(vae.encode(pixels), vae.encode(pixels))  # deterministic: a cache key maps to one tensor


def test_vae_tiles_frames_larger_than_one_tile(spec, tiny_root):
    vae = spec.load_vae(tiny_root)
    assert vae.model.use_tiling and vae.model.tile_sample_min_width == 256
    latents = vae.encode(torch.full((1, 264, 272, 3), 128, dtype=torch.uint8))
    assert tuple(latents.shape) == (16, 1, 33, 34)


def test_vae_rejects_bad_clips_with_a_clear_message(spec, tiny_root):
    vae = spec.load_vae(tiny_root)
    with pytest.raises(ValueError, match="not 4k\\+1"):
        vae.encode(torch.zeros(4, 16, 16, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        vae.encode(torch.zeros(5, 16, 16, 3))
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(torch.zeros(1, 20, 16, 3, dtype=torch.uint8))


def test_text_encoder_matches_umt5_on_valid_tokens_and_zeroes_padding(spec, tiny_root):
    encoder = spec.load_text_encoder(tiny_root)
    prompts = ["a red fox running through snow", "", "  Tom &amp;amp; Jerry\n\n&lt;3  "]
    embeddings, mask = encoder.encode(prompts, batch_size=2)
    assert embeddings.shape == (3, 512, TINY_DIT_CONFIG["caption_channels"]) and mask.dtype == torch.int64

    cleaned = [clean_prompt(p) for p in prompts]
    tokens = encoder.tokenizer(cleaned, padding="max_length", max_length=512, return_tensors="pt")
    with torch.no_grad():
        direct = encoder.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
    assert torch.equal(mask, tokens["attention_mask"].long())
    assert mask[1].sum() == 1  # "" is just </s>, as with umT5
    valid = mask.bool()
    assert_close(embeddings[valid], direct[valid], atol=1e-6, rtol=0)
    assert torch.count_nonzero(embeddings[~valid]) == 0
    again, _ = encoder.encode(["Tom & Jerry <3"])  # cleaning happens inside encode
    assert torch.equal(again[0], embeddings[2])


def test_long_caption_is_truncated_with_a_warning_naming_it(spec, tiny_root, caplog):
    encoder = spec.load_text_encoder(tiny_root)
    caption = "zebra " * 600
    with caplog.at_level(logging.WARNING):
        _, mask = encoder.encode([caption, "short"])
    assert mask[0].sum() == 512 and mask[1].sum() < 10
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "zebra zebra" in warnings[0] and "512" in warnings[0]


def test_tiny_tokenizer_encodes_any_unicode_without_unknowns(spec, tiny_root):
    tokenizer = spec.load_text_encoder(tiny_root).tokenizer
    text = "一只可爱的猫咪 在草地上奔跑。 A cat 🐱 café ﬁne"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "一只可爱的猫咪 在草地上奔跑。 A cat 🐱 café fine"  # NFKC folds the ligature


def test_identities_follow_weights_and_dtype_without_loading(spec, tiny_root, tmp_path):
    encoder = spec.load_text_encoder(tiny_root)
    assert encoder.identity == spec.text_encoder_identity(tiny_root)
    assert spec.text_encoder_identity(tiny_root, dtype=torch.bfloat16) != encoder.identity
    assert spec.vae_identity(tiny_root) == spec.load_vae(tiny_root).identity

    copy = tmp_path / "copy"
    shutil.copytree(tiny_root / "vae", copy / "vae")
    assert spec.vae_identity(copy) == spec.vae_identity(tiny_root)  # same files elsewhere: same identity
    config = json.loads((copy / "vae" / "config.json").read_text())
    config["latents_std"][0] = 3.0
    (copy / "vae" / "config.json").write_text(json.dumps(config))
    assert spec.vae_identity(copy) != spec.vae_identity(tiny_root)


def test_missing_component_names_the_folder(spec, tmp_path):
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        spec.load_text_encoder(tmp_path)


def test_tiny_components_are_deterministic(tmp_path):
    first, second = ensure_tiny_checkpoint(tmp_path / "a"), ensure_tiny_checkpoint(tmp_path / "b")
    for name in ("text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors", "tokenizer/tokenizer.json", "scheduler/scheduler_config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    scheduler = json.loads((first / "scheduler/scheduler_config.json").read_text())
    assert (scheduler["shift"], scheduler["use_dynamic_shifting"], scheduler["num_train_timesteps"]) == (12.0, False, 1000)
    assert VideoVAE.from_pretrained(first).model.config.z_dim == 16
