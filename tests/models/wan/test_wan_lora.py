"""A LoRA trained on the tiny Wan loads in diffusers' WanPipeline and ComfyUI's key scheme.

Oracle: ``WanPipeline.load_lora_weights`` (diffusers' own Wan LoRA conversion from the
original Wan / ComfyUI names) changes the pipeline's output exactly as frametuner's
sampler changes with the LoRA, within 1e-5 in float32.
"""

from __future__ import annotations

import torch

from .helpers import denoise_wan, frametuner_dit, text_embeds, tiny_pipeline


def _trained_lora(model, seed: int = 11):
    """LoRA rank 4 / alpha 2 on Wan's default targets, with weights moved off their initialisation
    (as training would: lora_B is zero at the start)."""
    from frametuner.lora import add_lora

    add_lora(model, rank=4, alpha=2.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return model


def test_comfyui_export_names_original_wan_modules(tmp_path):
    from safetensors import safe_open

    from frametuner.lora import export_lora

    pipe, root = tiny_pipeline("tiny")
    model = _trained_lora(frametuner_dit(root))
    path = export_lora(model, tmp_path, formats=["comfyui"])["comfyui"]
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys
    assert "diffusion_model.blocks.1.cross_attn.o.lora_B.weight" in keys
    assert "diffusion_model.blocks.1.ffn.0.alpha" in keys
    assert "diffusion_model.blocks.0.ffn.2.lora_A.weight" in keys
    assert all(key.startswith("diffusion_model.blocks.") for key in keys)
    assert len(keys) == 2 * 10 * 3  # 2 blocks x 10 layers x (A, B, alpha)


def test_lora_in_wan_pipeline_equals_frametuner_sampler(tmp_path):
    from frametuner.lora import apply_lora, export_lora

    pipe, root = tiny_pipeline("tiny")
    trained = _trained_lora(frametuner_dit(root))
    path = export_lora(trained, tmp_path, formats=["comfyui"])["comfyui"]

    latents = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(12))
    prompt, prompt_mask = text_embeds(6, seed=13)
    negative, negative_mask = text_embeds(2, seed=14)
    kwargs = dict(
        prompt_embeds=prompt * prompt_mask[..., None], negative_prompt_embeds=negative * negative_mask[..., None],
        num_inference_steps=4, guidance_scale=5.0, height=32, width=48, num_frames=5, output_type="latent",
    )
    plain = pipe(latents=latents.clone(), **kwargs).frames
    pipe.load_lora_weights(str(path))
    with_lora = pipe(latents=latents.clone(), **kwargs).frames

    sample = dict(steps=4, guidance=5.0)
    ours_trained = denoise_wan(trained, latents, prompt, prompt_mask, negative, negative_mask, **sample)
    applied = frametuner_dit(root)
    apply_lora(applied, path)
    ours_applied = denoise_wan(applied, latents, prompt, prompt_mask, negative, negative_mask, **sample)

    torch.testing.assert_close(ours_trained, with_lora, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_applied, with_lora, atol=1e-5, rtol=0)
    assert (with_lora - plain).abs().max() > 1e-2  # the LoRA changes the output far beyond the tolerance


def test_lora_cli_takes_the_family_from_the_files_metadata(tmp_path, capsys):
    """`frametuner lora info/convert` on a Wan LoRA need no --model_family: training writes
    base_model "wan:<flavour>" into every file."""
    from frametuner.cli import main
    from frametuner.lora import export_lora, read_lora

    _, root = tiny_pipeline("tiny")
    model = _trained_lora(frametuner_dit(root))
    comfyui = export_lora(model, tmp_path, formats=["comfyui"], metadata={"base_model": "wan:tiny"})["comfyui"]
    assert main(["lora", "info", str(comfyui)]) == 0
    assert "comfyui format, 20 layers, rank [4]" in capsys.readouterr().out
    assert main(["lora", "convert", str(comfyui), str(tmp_path / "peft"), "--to", "peft"]) == 0
    back = read_lora(tmp_path / "peft", family="wan")
    original = read_lora(comfyui, family="wan")
    assert back.deltas.keys() == original.deltas.keys()
    for name, delta in original.deltas.items():
        torch.testing.assert_close(back.deltas[name].weight(), delta.weight())
