"""validation_distill_lora (issue 23): validation videos rendered with the family's distilled
setting and upstream's distillation LoRA stacked on the LoRA being trained."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from safetensors.torch import load_file

from frametuner.cache.entries import pad_text
from frametuner.config import TrainConfig
from frametuner.lora import add_lora, apply_lora, lora_weights_from_model
from frametuner.lora.formats import write_lora
from frametuner.models.longcat_video.tiny import build_tiny_transformer
from frametuner.models.registry import load_spec
from frametuner.sampling import denoise
from frametuner.sampling.pipeline import initial_noise
from frametuner.training.pipeline import ValidationPrompt, Validator

SIZE, FRAMES = (32, 48), 5


def _lora_model(seed: int):
    """The tiny DiT with a rank-4 LoRA whose up weights are random (so it changes the output)."""
    torch.manual_seed(0)
    model = build_tiny_transformer().eval()
    model.requires_grad_(False)
    add_lora(model, rank=4, alpha=4)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


class _TextCache:
    def __init__(self, channels: int):
        self.channels = channels

    def load(self, prompt: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(len(prompt))
        return torch.randn(3 + len(prompt) % 4, self.channels, generator=generator)


@pytest.mark.parametrize("fmt", ["upstream", "comfyui"])
def test_validation_with_a_distill_lora_equals_a_manual_distilled_denoise(tmp_path, fmt):
    spec = load_spec("longcat_video")
    distill_path = write_lora(lora_weights_from_model(_lora_model(seed=7)), tmp_path / f"cfg_step_lora_{fmt}.safetensors", fmt)
    config = TrainConfig(
        model_flavour="tiny", mixed_precision="no", report_to="none", output_dir=str(tmp_path / "out"),
        validation_prompt="a fox", validation_resolution=f"{SIZE[0]}x{SIZE[1]}", validation_num_video_frames=FRAMES,
        validation_distill_lora=str(distill_path),
    )
    model = _lora_model(seed=3)  # the LoRA being trained
    reference_model = copy.deepcopy(model)
    text_cache = _TextCache(model.config.caption_channels)
    validator = Validator(config, spec, [ValidationPrompt("a fox", None)], text_cache)
    validator._vae_fits = lambda device: False  # keep the final latents (no VAE needed)
    events = []
    trainer = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(unwrap_model=lambda m: m, device=torch.device("cpu"), is_main_process=True),
        model=model, sharded=False, events=types.SimpleNamespace(emit=lambda *a, **k: events.append(k)),
    )
    validator(trainer, 0)
    latents = load_file(str(tmp_path / "out" / "validation" / "step000000_prompt00.latents.safetensors"))["latents"]
    assert not hasattr(model, "_frametuner_lora_handles") or not model._frametuner_lora_handles  # removed afterwards

    # By hand: both LoRAs, the family's distilled steps and guidance (16 and 1 for this family), the distilled schedule.
    defaults = spec.defaults
    apply_lora(reference_model, distill_path)
    text = text_cache.load("a fox")
    embeds, mask = pad_text(text, max(text.shape[0], text_cache.load("").shape[0]))
    noise = initial_noise((1, *spec.geometry.latent_shape(FRAMES, *SIZE)), config.validation_seed)
    with torch.no_grad():
        expected = denoise(
            reference_model, noise, embeds[None], mask[None], None, None,
            steps=defaults.distill_steps, guidance=defaults.distill_guidance, distill=True,
        )
    assert defaults.distill_steps == 16 and defaults.distill_guidance == 1.0
    torch.testing.assert_close(latents, expected[0], atol=1e-6, rtol=0)
    # And it is not the plain validation: without the distill LoRA the video differs.
    plain = copy.deepcopy(model)
    with torch.no_grad():
        undistilled = denoise(plain, noise, embeds[None], mask[None], None, None, steps=defaults.distill_steps, guidance=1.0, distill=True)
    assert (undistilled[0] - latents).abs().max() > 1e-3


def test_a_family_without_a_distilled_mode_refuses_it(tmp_path):
    from frametuner.models.registry import families

    plain = [name for name, info in families().items() if info.defaults.distill_steps is None]
    if not plain:
        pytest.skip("every registered family has a distilled mode")
    with pytest.raises(ValueError, match="has no distilled sampling mode"):
        TrainConfig(model_family=plain[0], validation_distill_lora=str(tmp_path / "x.safetensors"))


def test_the_key_is_an_input_path_for_the_server():
    from frametuner.config.schema import PATH_INPUT, path_fields

    assert path_fields(TrainConfig)["validation_distill_lora"].kind == PATH_INPUT
