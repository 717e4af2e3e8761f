"""`frametuner demo --model_family wan`: the tiny Wan end to end (scan, cache, train, validate,
export) through the CLI, and its ComfyUI LoRA loads in diffusers' WanPipeline."""

from __future__ import annotations

import json

import av
import pytest
import torch

pytestmark = pytest.mark.slow


def test_wan_demo_trains_validates_and_exports_a_lora_wan_pipeline_reads(tmp_path):
    from frametuner.cli import main

    demo = tmp_path / "demo"
    args = [
        "demo", "--dir", str(demo), "--model_family", "wan",
        "--max_train_steps", "4", "--checkpointing_steps", "100", "--validation_steps", "2",
        "--validation_num_inference_steps", "2", "--validation_resolution", "32x48", "--validation_num_video_frames", "5",
        "--report_to", "none",
    ]
    assert main(args) == 0
    out = demo / "output"
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert start["config"]["model_family"] == "wan"
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 4 and all(torch.isfinite(torch.tensor(e["loss"])) for e in steps)
    videos = [e for e in events if e["event"] == "validation"]
    assert [e["step"] for e in videos] == [0, 2, 4]
    with av.open(str(out / videos[-1]["video"])) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 5 and (frames[0].height, frames[0].width) == (32, 48)

    done = next(e for e in events if e["event"] == "done")
    comfyui = out / done["lora"]["comfyui"]
    from .helpers import text_embeds, tiny_pipeline

    pipe, _ = tiny_pipeline("tiny")
    latents = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    prompt, mask = text_embeds(5, seed=1)
    kwargs = dict(prompt_embeds=prompt * mask[..., None], num_inference_steps=2, guidance_scale=1.0, height=32, width=48, num_frames=5, output_type="latent")
    plain = pipe(latents=latents.clone(), **kwargs).frames
    pipe.load_lora_weights(str(comfyui))
    trained = pipe(latents=latents.clone(), **kwargs).frames
    assert (trained - plain).abs().max() > 1e-6  # four steps of training moved the LoRA off zero
