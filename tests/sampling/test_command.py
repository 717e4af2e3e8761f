"""``frametuner sample``: every bad input fails before any model loads, with its fix; a good one writes a video."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from frametuner.cli import main
from frametuner.models.longcat_video.spec import LongCatVideoSpec
from frametuner.sampling.command import parse_lora_argument
from frametuner.sampling.video import sheet_layout

from ..conftest import REFERENCE
from .fakes import FakeComponents

FIXTURE_LORA = REFERENCE / "lora" / "upstream_format_lora.safetensors"  # made for the fixture DiT (hidden 256)
TINY = ["--model_flavour", "tiny", "--mixed_precision", "no", "--device", "cpu"]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load a component fails the test: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    for name in ("load_transformer", "load_text_encoder", "load_vae"):
        monkeypatch.setattr(LongCatVideoSpec, name, refuse, raising=False)


def run_sample(capsys, *flags, tmp_path=None):
    output = ["--output", str(tmp_path / "out.mp4")] if tmp_path is not None and "--output" not in flags else []
    code = main(["sample", "--prompt", "a red fox", *TINY, *output, *flags])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--num_frames", "10"], ["--num_frames 10", "not 4k+1", "use 9 or 13"]),
        (["--resolution", "480x830"], ["--resolution 480x830", "multiples of 16", "try '480x832'"]),
        (["--resolution", "480"], ["--resolution 480", "HEIGHTxWIDTH"]),
        (["--image", "no/such/first_frame.png"], ["--image no/such/first_frame.png", "file not found"]),
        (["--lora", "no/such/lora.safetensors"], ["--lora no/such/lora.safetensors", "file not found"]),
        (["--lora", f"{FIXTURE_LORA}:strong"], ["multiplier 'strong' is not a number", "PATH:0.8"]),
        (["--steps", "0"], ["--steps 0", "at least 1"]),
        (["--distill", "--steps", "60"], ["--steps 60", "50-step grid"]),
        (["--output", "clip.gif"], ["--output clip.gif", "end the name in .mp4"]),
        (["--crf", "60"], ["--crf 60", "0..51"]),
        (["--pretrained_model_name_or_path", "no/such/folder/model"], ["dit/config.json not found", "upstream layout"]),
    ],
)
def test_bad_input_is_reported_before_loading(capsys, tmp_path, no_model_loads, flags, expected):
    code, err = run_sample(capsys, *flags, tmp_path=tmp_path)
    assert code == 2, err
    for text in expected:
        assert text in err


def test_all_problems_are_reported_together(capsys, tmp_path, no_model_loads):
    code, err = run_sample(capsys, "--num_frames", "8", "--resolution", "100x100", tmp_path=tmp_path)
    assert code == 2
    assert "--num_frames 8" in err and "--resolution 100x100" in err


def test_unreadable_image(capsys, tmp_path, no_model_loads):
    fake = tmp_path / "photo.png"
    fake.write_text("not a picture")
    code, err = run_sample(capsys, "--image", str(fake), tmp_path=tmp_path)
    assert code == 2 and "cannot be read as an image" in err and "PNG, JPEG or WebP" in err


def test_image_to_video_needs_more_than_one_frame(capsys, tmp_path, no_model_loads):
    image = tmp_path / "first.png"
    Image.new("RGB", (48, 32)).save(image)
    code, err = run_sample(capsys, "--image", str(image), "--num_frames", "1", tmp_path=tmp_path)
    assert code == 2 and "use at least 5 frames" in err


def test_unreadable_lora(capsys, tmp_path, no_model_loads):
    garbage = tmp_path / "lora.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    code, err = run_sample(capsys, "--lora", str(garbage), tmp_path=tmp_path)
    assert code == 2 and "cannot be read as safetensors" in err


def test_file_without_lora_weights(capsys, tmp_path, no_model_loads):
    checkpoint = tmp_path / "model.safetensors"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 2)}, str(checkpoint))
    code, err = run_sample(capsys, "--lora", str(checkpoint), tmp_path=tmp_path)
    assert code == 2 and "holds no LoRA weights" in err and "lora_A/lora_B" in err


def test_lora_for_another_model_size(capsys, tmp_path, no_model_loads):
    """The fixture LoRA wraps 256-wide layers; the tiny flavour's are 128 wide."""
    code, err = run_sample(capsys, "--lora", str(FIXTURE_LORA), tmp_path=tmp_path)
    assert code == 2
    assert "does not fit longcat_video" in err and "hidden size 128" in err
    assert "takes 128 inputs" in err and "another architecture or model size" in err


def _peft_lora(path, layers):
    tensors = {}
    for name, (rank, fan_in, fan_out) in layers.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = torch.zeros(rank, fan_in)
        tensors[f"base_model.model.{name}.lora_B.weight"] = torch.zeros(fan_out, rank)
    save_file(tensors, str(path))
    return path


def test_lora_for_layers_the_model_lacks(capsys, tmp_path, no_model_loads):
    lora = _peft_lora(tmp_path / "deep.safetensors", {"blocks.0.attn.proj": (4, 128, 128), "blocks.7.attn.proj": (4, 128, 128)})
    code, err = run_sample(capsys, "--lora", str(lora), tmp_path=tmp_path)
    assert code == 2 and "'blocks.7.attn.proj' is not a layer of this model" in err and "1 layer(s) differ" in err


def test_fitting_loras_pass_the_check(tmp_path):
    """PEFT keys against the tiny model, upstream fused keys against the fixture DiT: no problems."""
    from frametuner.models.registry import load_spec
    from frametuner.sampling.command import skeleton_transformer
    from frametuner.sampling.lora_check import lora_fit_problems

    spec = load_spec("longcat_video")
    tiny = skeleton_transformer(spec, spec.checkpoint_root("tiny", None))
    assert next(tiny.parameters()).device.type == "meta"
    peft = _peft_lora(tmp_path / "peft.safetensors", {"blocks.1.attn.qkv": (8, 128, 384), "blocks.0.ffn.w2": (8, 512, 128)})
    assert lora_fit_problems(peft, tiny) == []
    assert lora_fit_problems(FIXTURE_LORA, skeleton_transformer(spec, REFERENCE)) == []


def test_lora_argument_parsing():
    assert parse_lora_argument("style.safetensors") == (parse_lora_argument("style.safetensors:1")[0], 1.0)
    path, multiplier = parse_lora_argument("loras/style.safetensors:0.75")
    assert (str(path), multiplier) == ("loras/style.safetensors", 0.75)
    assert str(parse_lora_argument("C:\\loras\\style.safetensors")[0]) == "C:\\loras\\style.safetensors"


def _check_outputs(tmp_path, frames=9, size=(32, 48), fps=15):
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
        assert stream.average_rate == fps and stream.codec_context.name == "h264"
    assert len(decoded) == frames and (decoded[0].height, decoded[0].width) == size
    sheet = Image.open(tmp_path / "out.png")
    assert sheet.size == sheet_layout(frames, *size).size


def test_sample_end_to_end_with_fake_encoders(capsys, tmp_path, monkeypatch):
    fakes = FakeComponents(monkeypatch, LongCatVideoSpec)
    image = tmp_path / "first.png"
    Image.fromarray(np.full((40, 64, 3), 200, np.uint8)).save(image)
    code, err = run_sample(capsys, "--resolution", "32x48", "--num_frames", "9", "--steps", "2", "--fps", "12", "--image", str(image), tmp_path=tmp_path)
    assert code == 0, err
    assert fakes.loaded == ["text_encoder", "vae"]
    assert fakes.vae.encoded[0].shape == (1, 32, 48, 3)
    _check_outputs(tmp_path, fps=12)


def test_sample_end_to_end_tiny_model(capsys, tmp_path):
    """The real tiny text encoder and VAE with the tiny DiT."""
    code, err = run_sample(capsys, "--resolution", "32x48", "--num_frames", "9", "--steps", "2", tmp_path=tmp_path)
    assert code == 0, err
    _check_outputs(tmp_path)


def test_decode_command_turns_deferred_latents_into_videos(capsys, tmp_path, monkeypatch):
    from frametuner.models.registry import load_spec
    from frametuner.models.family import TextConditioning
    from frametuner.sampling import VideoSettings, render_validation

    fakes = FakeComponents(monkeypatch, LongCatVideoSpec)
    spec = load_spec("longcat_video")
    dit = spec.load_transformer(spec.checkpoint_root("tiny", None), dtype=torch.float32)
    embeds, mask = fakes.text_encoder.encode(["a red fox"])
    validation = tmp_path / "run" / "validation"
    render_validation(dit, None, spec=spec, validation_dir=validation, step=10, prompt_index=0, prompt="a red fox",
                      text=TextConditioning(embeds, mask), video=VideoSettings(guidance=1.0, height=32, width=48, num_frames=9, steps=1))
    assert not list(validation.glob("*.mp4"))
    code = main(["decode", "--output_dir", str(tmp_path / "run"), *TINY])
    assert code == 0, capsys.readouterr().err
    assert fakes.loaded == ["vae"]
    with av.open(str(validation / "step000010_prompt00.mp4")) as container:
        assert len(list(container.decode(video=0))) == 9
    assert not list(validation.glob("*.latents.safetensors"))
    assert main(["decode", "--output_dir", str(tmp_path / "run"), *TINY]) == 0
    assert "nothing to decode" in capsys.readouterr().out
