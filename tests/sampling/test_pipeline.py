"""The prompt -> video pipeline and validation renders, with the tiny DiT and fake encoder/VAE."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from frametuner.models.longcat_video.spec import LongCatVideoSpec
from frametuner.models.registry import load_spec
from frametuner.sampling import denoise, initial_noise
from frametuner.sampling.gallery import load_records
from frametuner.models.family import TextConditioning
from frametuner.sampling.pipeline import SampleRequest, VideoSettings, condition_image, decode_pending_validations, generate, render_validation, sample_video

from .fakes import FakeComponents

SMALL = dict(height=32, width=48, num_frames=9, steps=2)


@pytest.fixture
def spec():
    return load_spec("longcat_video")


@pytest.fixture
def fakes(monkeypatch):
    return FakeComponents(monkeypatch, LongCatVideoSpec)


@pytest.fixture(scope="module")
def tiny_root():
    return load_spec("longcat_video").checkpoint_root("tiny", None)


@pytest.fixture(scope="module")
def tiny_dit(tiny_root):
    return load_spec("longcat_video").load_transformer(tiny_root, dtype=torch.float32).eval()


def test_initial_noise_is_seeded_cpu_float32():
    a, b = initial_noise((1, 16, 3, 4, 6), 7), initial_noise((1, 16, 3, 4, 6), 7)
    assert a.dtype == torch.float32 and a.device.type == "cpu" and torch.equal(a, b)
    assert not torch.equal(a, initial_noise((1, 16, 3, 4, 6), 8))


def test_condition_image_covers_then_centre_crops():
    # 200x100 image with red | green | blue vertical stripes; a 32x32 cover-crop keeps only green.
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, :50, 0] = 255
    pixels[:, 50:150, 1] = 255
    pixels[:, 150:, 2] = 255
    frame = condition_image(Image.fromarray(pixels), 32, 32)
    assert frame.shape == (1, 32, 32, 3) and frame.dtype == torch.uint8
    assert (frame[..., 1] > 200).all() and (frame[..., 0] < 60).all() and (frame[..., 2] < 60).all()


def test_t2v_is_the_denoise_loop_between_encoder_and_vae(spec, fakes, tiny_root, tiny_dit):
    request = SampleRequest(prompt="a red fox", negative_prompt="blurry", seed=3, **SMALL)
    frames = generate(request, spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    assert frames.shape == (9, 32, 48, 3) and frames.dtype == torch.uint8
    # CFG batch order: the negative prompt is encoded first, in the same call.
    assert fakes.text_encoder.calls == [["blurry", "a red fox"]]
    embeds, mask = fakes.text_encoder.encode(["blurry", "a red fox"])
    expected = denoise(tiny_dit, initial_noise((1, 16, 3, 4, 6), 3), embeds[1:], mask[1:], embeds[:1], mask[:1], steps=2, guidance=4.0)
    assert torch.equal(fakes.vae.decoded[0], expected[0])
    again = generate(request, spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    assert torch.equal(frames, again), "same seed, same video"


def test_guidance_one_encodes_only_the_prompt(spec, fakes, tiny_root):
    generate(SampleRequest(prompt="a red fox", guidance=1.0, **SMALL), spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    assert fakes.text_encoder.calls == [["a red fox"]]


def test_i2v_writes_the_encoded_image_into_frame_zero(spec, fakes, tiny_root, tmp_path):
    image = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 64, 3), dtype=np.uint8)).save(image)
    request = SampleRequest(prompt="a red fox", image=image, **SMALL)
    generate(request, spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    (encoded_input,) = fakes.vae.encoded
    assert encoded_input.shape == (1, 32, 48, 3)
    assert torch.equal(encoded_input, condition_image(image, 32, 48))
    final = fakes.vae.decoded[0]
    assert torch.equal(final[:, :1], fakes.vae.encode(encoded_input)), "the condition frame is never stepped"


def test_sample_video_writes_mp4_and_contact_sheet(spec, fakes, tiny_root, tmp_path):
    request = SampleRequest(prompt="a red fox", fps=12, output=tmp_path / "fox.mp4", **SMALL)
    outputs = sample_video(request, spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    with av.open(str(outputs.video)) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
        assert stream.average_rate == 12
    assert len(decoded) == 9 and (decoded[0].height, decoded[0].width) == (32, 48)
    assert outputs.contact_sheet == tmp_path / "fox.png" and outputs.contact_sheet.is_file()


def test_loras_are_applied_with_their_multipliers(spec, fakes, tiny_root, monkeypatch):
    import sys
    import types

    applied = []
    fake_lora_module = types.SimpleNamespace(apply_lora=lambda model, path, multiplier: applied.append((type(model).__name__, str(path), multiplier)))
    monkeypatch.setitem(sys.modules, "frametuner.lora", fake_lora_module)
    request = SampleRequest(prompt="x", loras=[("a.safetensors", 1.0), ("b.safetensors", 0.5)], **SMALL)
    generate(request, spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    assert applied == [("LongCatVideoTransformer3DModel", "a.safetensors", 1.0), ("LongCatVideoTransformer3DModel", "b.safetensors", 0.5)]


def _validation_inputs(fakes):
    embeds, mask = fakes.text_encoder.encode(["", "a red fox"])
    return dict(prompt_embeds=embeds[1:], prompt_mask=mask[1:], negative_embeds=embeds[:1], negative_mask=mask[:1])


def test_render_validation_outputs_and_training_state(spec, fakes, tiny_dit, tmp_path):
    tiny_dit.train()
    rng_before = torch.get_rng_state()
    outputs = render_validation(
        tiny_dit, fakes.vae, spec=spec, validation_dir=tmp_path, step=100, prompt_index=1, prompt="a red fox",
        text=TextConditioning(**_validation_inputs(fakes)), video=VideoSettings(seed=5, fps=15, **SMALL),
    )
    assert tiny_dit.training, "train mode restored"
    assert torch.equal(torch.get_rng_state(), rng_before), "training RNG untouched"
    assert outputs.video == tmp_path / "step000100_prompt01.mp4" and outputs.video.is_file()
    assert outputs.contact_sheet == tmp_path / "step000100_prompt01.png" and outputs.contact_sheet.is_file()
    assert outputs.frames.shape == (9, 32, 48, 3)
    tiny_dit.eval()
    expected = denoise(tiny_dit, initial_noise((1, 16, 3, 4, 6), 5), **_validation_inputs(fakes), steps=2)
    assert torch.equal(fakes.vae.decoded[-1], expected[0])
    assert 'src="step000100_prompt01.mp4"' in outputs.index.read_text()


def test_render_validation_image_to_video(spec, fakes, tiny_dit, tmp_path):
    cond = torch.randn(16, 1, 4, 6, generator=torch.Generator().manual_seed(0))
    render_validation(tiny_dit, fakes.vae, spec=spec, validation_dir=tmp_path, step=0, prompt_index=0, prompt="p", cond_latents=cond,
                      text=TextConditioning(**_validation_inputs(fakes)), video=VideoSettings(**SMALL))
    assert torch.equal(fakes.vae.decoded[-1][:, :1], cond)
    (record,) = load_records(tmp_path)
    assert record.settings["image_to_video"] is True


def test_deferred_decoding(spec, fakes, tiny_dit, tmp_path):
    outputs = render_validation(tiny_dit, None, spec=spec, validation_dir=tmp_path, step=50, prompt_index=0, prompt="a red fox",
                                text=TextConditioning(**_validation_inputs(fakes)), video=VideoSettings(fps=10, **SMALL))
    assert outputs.video is None and outputs.latents.is_file()
    assert "decoding pending" in outputs.index.read_text()
    (done,) = decode_pending_validations(tmp_path, fakes.vae)
    assert done.video == tmp_path / "step000050_prompt00.mp4" and not outputs.latents.exists()
    with av.open(str(done.video)) as container:
        assert container.streams.video[0].average_rate == 10
    assert "decoding pending" not in done.index.read_text()
    assert decode_pending_validations(tmp_path, fakes.vae) == []


def test_components_are_loaded_one_after_another(spec, fakes, tiny_root, monkeypatch):
    """Text-to-video: encoder, then DiT, then VAE; the DiT is released before the VAE loads."""
    import weakref

    order, dit_refs = [], []
    original = LongCatVideoSpec.load_transformer

    def load_transformer(self, root, **kwargs):
        order.append("transformer")
        model = original(self, root, **kwargs)
        dit_refs.append(weakref.ref(model))
        return model

    def load_vae(self, root, *, device, dtype):
        order.append("vae")
        assert dit_refs and dit_refs[0]() is None, "the DiT is still alive while the VAE loads"
        return fakes.vae

    monkeypatch.setattr(LongCatVideoSpec, "load_transformer", load_transformer)
    monkeypatch.setattr(LongCatVideoSpec, "load_vae", load_vae)
    generate(SampleRequest(prompt="x", **SMALL), spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    assert fakes.loaded == ["text_encoder"] and order == ["transformer", "vae"]
