"""Every LoRA file and folder training writes samples the same video (issue 19 point 1).

A tiny LoRA is trained, then ``frametuner sample --lora X`` runs with each thing the
checkpoint's ``lora/`` folder holds (the PEFT folder, its ``adapter_model.safetensors``,
the upstream file, the ComfyUI file) and ``frametuner.lora.apply_lora`` is applied with
each: the denoised latents agree within 1e-6, and differ from the base model's.
"""

from __future__ import annotations

import pytest
import torch

from frametuner.cli import main

from ..training.helpers import synthetic_data, tiny_config

TINY = ["--model_flavour", "tiny", "--mixed_precision", "no", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained_lora(tmp_path_factory):
    from frametuner.training.trainer import Trainer

    folder = tmp_path_factory.mktemp("run")
    config = tiny_config(folder, max_train_steps=1, learning_rate=3e-2)
    result = Trainer(config, synthetic_data(seed=0, n=1)).train()
    lora = result["lora"]
    assert set(lora) == {"peft", "upstream", "comfyui"}
    peft = lora["peft"]
    return {
        "peft folder": peft,
        "peft adapter_model.safetensors": peft / "adapter_model.safetensors",
        "upstream": lora["upstream"],
        "comfyui": lora["comfyui"],
    }


@pytest.fixture
def denoised(monkeypatch):
    """The latents each ``frametuner sample`` run denoised (before the VAE's uint8 rounding)."""
    import frametuner.sampling.pipeline as pipeline

    seen = []
    original = pipeline.denoise

    def recording(*args, **kwargs):
        latents = original(*args, **kwargs)
        seen.append(latents.detach().clone())
        return latents

    monkeypatch.setattr(pipeline, "denoise", recording)
    return seen


def sample(capsys, tmp_path, *flags) -> None:
    output = tmp_path / f"out{len(list(tmp_path.glob('*.mp4')))}.mp4"
    code = main(["sample", "--prompt", "a red fox", *TINY, "--resolution", "32x48", "--num_frames", "5", "--steps", "2", "--output", str(output), *flags])
    err = capsys.readouterr().err
    assert code == 0, err
    assert output.is_file()


@pytest.mark.slow
def test_sample_gives_the_same_video_for_every_lora_training_writes(trained_lora, denoised, capsys, tmp_path):
    sample(capsys, tmp_path)  # the base model
    for path in trained_lora.values():
        sample(capsys, tmp_path, "--lora", str(path))
    base, *with_lora = denoised
    assert len(with_lora) == len(trained_lora)
    reference = with_lora[0]
    assert (reference - base).abs().max() > 1e-3  # the LoRA changes the video
    for name, latents in zip(trained_lora, with_lora):
        assert torch.allclose(latents, reference, atol=1e-6, rtol=0), (name, (latents - reference).abs().max())


def test_apply_lora_reads_everything_training_writes(trained_lora):
    from frametuner.lora import apply_lora, remove_loras
    from frametuner.models.registry import load_spec

    spec = load_spec("longcat_video")
    model = spec.load_transformer(spec.checkpoint_root("tiny", None), dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(3)
    inputs = (torch.randn(1, 16, 2, 4, 6, generator=g), torch.tensor([600.0]), torch.randn(1, 8, 64, generator=g), torch.ones(1, 8, dtype=torch.int64))
    outputs = {}
    with torch.no_grad():
        base = model(*inputs)
        for name, path in trained_lora.items():
            handle = apply_lora(model, path)
            outputs[name] = model(*inputs)
            handle.remove()
        assert remove_loras(model) == 0 and torch.equal(model(*inputs), base)
    reference = outputs["peft folder"]
    assert (reference - base).abs().max() > 1e-3
    for name, output in outputs.items():
        assert torch.allclose(output, reference, atol=1e-6, rtol=0), name


def test_the_fit_check_maps_comfyui_names_and_peft_folders(trained_lora):
    """The pre-load check reads the same layer names apply_lora does (it once refused ComfyUI's
    'blocks.0.cross_attn.k' and a PEFT folder)."""
    from frametuner.models.registry import load_spec
    from frametuner.sampling.command import skeleton_transformer
    from frametuner.sampling.lora_check import lora_fit_problems

    spec = load_spec("longcat_video")
    skeleton = skeleton_transformer(spec, spec.checkpoint_root("tiny", None))
    for name, path in trained_lora.items():
        assert lora_fit_problems(path, skeleton) == [], name
