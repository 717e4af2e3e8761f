"""`frametuner sample --model_family wan`: text-to-video from the tiny Wan with a Wan LoRA; a LoRA of
another family is refused before anything loads."""

from __future__ import annotations

import av
import pytest
import torch

pytestmark = pytest.mark.slow


def test_sample_cli_renders_tiny_wan_with_its_comfyui_lora(tmp_path):
    from frametuner.cli import main
    from frametuner.lora import add_lora, export_lora

    from .helpers import frametuner_dit, tiny_root

    model = frametuner_dit(tiny_root("tiny"))
    add_lora(model, rank=4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    lora = export_lora(model, tmp_path / "lora", formats=["comfyui"])["comfyui"]
    out = tmp_path / "video.mp4"
    args = ["sample", "--model_family", "wan", "--model_flavour", "tiny", "--prompt", "a red ball", "--resolution", "32x48",
            "--num_frames", "5", "--steps", "2", "--output", str(out), "--lora", str(lora)]
    assert main(args) == 0
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 5 and (frames[0].height, frames[0].width) == (32, 48)


def test_sample_cli_image_to_video_with_the_tiny_i2v_wan(tmp_path):
    """--image on the I2V flavour conditions through the family's image_conditioning (mask + condition
    latents + CLIP); on a text-to-video flavour it is a clear error."""
    import numpy as np
    from PIL import Image

    from frametuner.cli import main

    image = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "i2v.mp4"
    common = ["--prompt", "a red ball", "--resolution", "32x48", "--num_frames", "5", "--steps", "2", "--image", str(image)]
    assert main(["sample", "--model_family", "wan", "--model_flavour", "tiny-i2v", *common, "--output", str(out)]) == 0
    with av.open(str(out)) as container:
        assert len(list(container.decode(video=0))) == 5
    with pytest.raises(ValueError, match="text-to-video checkpoint"):
        main(["sample", "--model_family", "wan", "--model_flavour", "tiny", *common, "--output", str(tmp_path / "t2v.mp4")])
