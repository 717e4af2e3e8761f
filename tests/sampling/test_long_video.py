"""Video continuation and long videos (``frametuner sample --video / --segments``), tiny DiT with the fake
text encoder and VAE: frame counts, what each segment conditions on, and resuming a killed run."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch

from frametuner.cli import main
from frametuner.models.longcat_video.spec import LongCatVideoSpec
from frametuner.models.registry import load_spec
from frametuner.sampling import long_video
from frametuner.sampling.long_video import SegmentFolder, SegmentFolderMismatch, long_video_frames, read_last_frames, stitch
from frametuner.sampling.pipeline import SampleRequest, sample_video
from frametuner.sampling.video import write_video

from .fakes import FakeComponents

NUM_FRAMES, COND_FRAMES = 9, 5  # 3 latent frames, 2 of them conditioning
SMALL = dict(height=32, width=48, num_frames=NUM_FRAMES, steps=2, cond_frames=COND_FRAMES)
FAST = {"use_kv_cache": True, "enhance_hf": False}  # 2 DiT calls per segment (enhance_hf would make 11)
TINY = ["--model_flavour", "tiny", "--mixed_precision", "no", "--device", "cpu"]


@pytest.fixture
def spec():
    return load_spec("longcat_video")


@pytest.fixture
def fakes(monkeypatch):
    return FakeComponents(monkeypatch, LongCatVideoSpec)


@pytest.fixture(scope="module")
def tiny_root():
    return load_spec("longcat_video").checkpoint_root("tiny", None)


@pytest.fixture
def denoise_calls(monkeypatch):
    """Every denoise call of the long-video module, with its keywords (the run itself is unchanged)."""
    calls = []
    real = long_video.denoise

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(long_video, "denoise", recording)
    return calls


def _request(tmp_path, name="long.mp4", **overrides):
    settings = dict(prompt="a red fox", seed=7, output=tmp_path / name, segments=2, sampler_options=dict(FAST), **SMALL)
    settings.update(overrides)
    return SampleRequest(**settings)


def _frames_of(path):
    with av.open(str(path)) as container:
        return len(list(container.decode(video=0)))


def test_three_segments_stitch_without_repeating_the_conditioning_frames(spec, fakes, tiny_root, tmp_path, denoise_calls):
    outputs = sample_video(_request(tmp_path), spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    expected = long_video_frames(NUM_FRAMES, COND_FRAMES, 2)
    assert expected == NUM_FRAMES + 2 * (NUM_FRAMES - COND_FRAMES) == 17
    assert outputs.frames.shape == (expected, 32, 48, 3)
    assert _frames_of(outputs.video) == expected
    folder = tmp_path / "long.segments"
    segments = [torch.from_numpy(np.load(folder / f"segment_{i:03d}.npy")) for i in range(3)]
    assert all(segment.shape == (NUM_FRAMES, 32, 48, 3) for segment in segments)
    assert torch.equal(outputs.frames, torch.cat([segments[0], segments[1][COND_FRAMES:], segments[2][COND_FRAMES:]]))
    # Segment i+1 conditions on the LAST cond_frames decoded frames of segment i (encoded again).
    assert [len(frames) for frames in fakes.vae.encoded] == [COND_FRAMES, COND_FRAMES]
    assert torch.equal(fakes.vae.encoded[0], segments[0][-COND_FRAMES:])
    assert torch.equal(fakes.vae.encoded[1], segments[1][-COND_FRAMES:])
    # The first segment is text-to-video; continuations keep K = 1 + (5 - 1) // 4 = 2 clean latent frames
    # (never stepped: the decoded latents start with the encoded condition) and run with the options.
    assert [call["num_cond_latents"] for call in denoise_calls] == [0, 2, 2]
    assert [call.get("use_kv_cache") for call in denoise_calls] == [None, True, True]
    for encoded, decoded in zip(fakes.vae.encoded, fakes.vae.decoded[1:]):
        assert torch.equal(decoded[:, :2], fakes.vae.encode(encoded))
    # Noise: segment i draws from seed + i, so segment 0 is the plain text-to-video of that seed.
    single = sample_video(SampleRequest(prompt="a red fox", seed=7, output=tmp_path / "one.mp4", height=32, width=48, num_frames=NUM_FRAMES, steps=2),
                          spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    assert torch.equal(single.frames, segments[0])


def test_killed_run_resumes_at_the_next_segment_and_gives_the_same_video(spec, fakes, tiny_root, tmp_path, monkeypatch, denoise_calls):
    uninterrupted = sample_video(_request(tmp_path, "straight.mp4"), spec=spec, root=tiny_root, dtype=torch.float32, progress=False).frames
    denoise_calls.clear()

    real_save = SegmentFolder.save

    def save_then_die(self, index, frames):
        path = real_save(self, index, frames)
        if index == 1:
            raise KeyboardInterrupt("killed after segment 2")
        return path

    monkeypatch.setattr(SegmentFolder, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        sample_video(_request(tmp_path), spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    folder = tmp_path / "long.segments"
    assert sorted(p.name for p in folder.glob("segment_*.npy")) == ["segment_000.npy", "segment_001.npy"]
    assert not (tmp_path / "long.mp4").exists()
    assert not list(folder.glob(".*.tmp")), "no half-written files"
    monkeypatch.setattr(SegmentFolder, "save", real_save)

    denoise_calls.clear()
    resumed = sample_video(_request(tmp_path), spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    assert len(denoise_calls) == 1, "only segment 3 is generated again"
    assert torch.equal(resumed.frames, uninterrupted)
    assert _frames_of(resumed.video) == long_video_frames(NUM_FRAMES, COND_FRAMES, 2)

    # A finished run with more --segments is extended, not redone.
    denoise_calls.clear()
    longer = sample_video(_request(tmp_path, segments=3), spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    assert len(denoise_calls) == 1
    assert torch.equal(longer.frames[: len(uninterrupted)], uninterrupted)
    assert len(longer.frames) == long_video_frames(NUM_FRAMES, COND_FRAMES, 3)


def test_resume_with_other_settings_is_refused(spec, fakes, tiny_root, tmp_path):
    folder = SegmentFolder.beside(tmp_path / "long.mp4", {"prompt": "a red fox", "seed": 7})
    assert folder.open() == 0
    folder.save(0, torch.zeros(NUM_FRAMES, 32, 48, 3, dtype=torch.uint8))
    assert SegmentFolder.beside(tmp_path / "long.mp4", {"prompt": "a red fox", "seed": 7}).open() == 1
    with pytest.raises(SegmentFolderMismatch, match="prompt: 'a red fox' before, 'a blue fox' now"):
        SegmentFolder.beside(tmp_path / "long.mp4", {"prompt": "a blue fox", "seed": 7}).open()
    # Through the pipeline: the manifest records what shapes the video (here the LoRA-free settings).
    request = _request(tmp_path, "run.mp4", segments=1)
    sample_video(request, spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    manifest = json.loads((tmp_path / "run.segments" / "manifest.json").read_text())["settings"]
    assert manifest["cond_frames"] == COND_FRAMES and manifest["seed"] == 7 and manifest["sampler_options"] == FAST
    with pytest.raises(SegmentFolderMismatch, match="steps"):
        sample_video(_request(tmp_path, "run.mp4", segments=1, steps=3), spec=spec, root=tiny_root, dtype=torch.float32, progress=False)


def test_stitch():
    segments = [torch.full((9, 1, 1, 3), i, dtype=torch.uint8) for i in range(3)]
    stitched = stitch(segments, 5)
    assert stitched[:, 0, 0, 0].tolist() == [0] * 9 + [1] * 4 + [2] * 4


# ---------------------------------------------------------------------- the CLI
def _write_clip(path, frames=12):
    rng = np.random.default_rng(0)
    pixels = np.repeat(rng.integers(0, 255, (frames, 1, 1, 3), dtype=np.uint8), 32, axis=1).repeat(48, axis=2)
    pixels[:, :, :, 0] = np.arange(frames, dtype=np.uint8)[:, None, None] * 20  # a frame index in red
    write_video(pixels, path, fps=15, crf=0)
    return path


def test_cli_continues_the_last_frames_of_a_video(capsys, tmp_path, fakes, denoise_calls):
    clip = _write_clip(tmp_path / "clip.mp4")
    output = tmp_path / "next.mp4"
    code = main(["sample", "--prompt", "a red fox", *TINY, "--resolution", "32x48", "--num_frames", "9", "--steps", "2",
                 "--video", str(clip), "--cond_frames", "5", "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    (encoded,) = fakes.vae.encoded
    assert torch.equal(encoded, read_last_frames(clip, 5, 32, 48))
    assert encoded[:, 0, 0, 0].tolist() == pytest.approx([140, 160, 180, 200, 220], abs=3), "the LAST five frames (7..11)"
    assert _frames_of(output) == 9
    # Upstream's generate_vc defaults: the KV cache and enhance_hf on.
    assert denoise_calls[0]["use_kv_cache"] is True and denoise_calls[0]["enhance_hf"] is True
    assert denoise_calls[0]["num_cond_latents"] == 2


def test_cli_flags_turn_the_continuation_options_off(capsys, tmp_path, fakes, denoise_calls):
    clip = _write_clip(tmp_path / "clip.mp4")
    code = main(["sample", "--prompt", "a red fox", *TINY, "--resolution", "32x48", "--num_frames", "9", "--steps", "2",
                 "--video", str(clip), "--cond_frames", "5", "--no_kv_cache", "--no_enhance_hf", "--output", str(tmp_path / "o.mp4")])
    assert code == 0, capsys.readouterr().err
    assert denoise_calls[0]["use_kv_cache"] is False and denoise_calls[0]["enhance_hf"] is False
    denoise_calls.clear()
    code = main(["sample", "--prompt", "a red fox", *TINY, "--resolution", "32x48", "--num_frames", "9", "--steps", "2",
                 "--video", str(clip), "--cond_frames", "5", "--distill", "--output", str(tmp_path / "d.mp4")])
    assert code == 0, capsys.readouterr().err
    assert denoise_calls[0]["use_kv_cache"] is True and denoise_calls[0]["enhance_hf"] is False, "enhance_hf is not for the distilled schedule"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--video", "no/such/clip.mp4"], ["--video no/such/clip.mp4", "file not found"]),
        (["--segments", "2", "--cond_frames", "6"], ["--cond_frames 6", "1 + 4k", "use 5 or 9"]),
        (["--segments", "2", "--cond_frames", "9"], ["--cond_frames 9", "leaves nothing to generate"]),
        (["--segments", "-1"], ["--segments -1", "0 or more"]),
        (["--segments", "1", "--model_family", "wan"], ["cannot continue videos"]),
    ],
)
def test_bad_continuation_input_is_reported_before_loading(capsys, tmp_path, monkeypatch, flags, expected):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    for name in ("load_transformer", "load_text_encoder", "load_vae"):
        monkeypatch.setattr(LongCatVideoSpec, name, refuse, raising=False)
    code = main(["sample", "--prompt", "a red fox", *TINY, "--num_frames", "9", "--output", str(tmp_path / "o.mp4"), *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    for text in expected:
        assert text in err, (text, err)


def test_video_with_too_few_frames_and_image_plus_video(capsys, tmp_path):
    clip = _write_clip(tmp_path / "short.mp4", frames=3)
    image = tmp_path / "first.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(image)
    code = main(["sample", "--prompt", "x", *TINY, "--num_frames", "9", "--video", str(clip), "--cond_frames", "5", "--image", str(image), "--output", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert code == 2
    assert "3 frames, fewer than the 5 conditioning frames" in err
    assert "--image and --video" in err


@pytest.mark.slow
def test_cli_continues_a_real_clip(capsys, tmp_path, fakes):
    """The shared sample clip (real H.264): its last frames, however many it has, condition the continuation."""
    from ..conftest import media_file

    clip = media_file("motorcycle.mp4")
    output = tmp_path / "moto.mp4"
    code = main(["sample", "--prompt", "a motorcycle", *TINY, "--resolution", "32x48", "--num_frames", "9", "--steps", "1",
                 "--video", str(clip), "--cond_frames", "5", "--segments", "1", "--no_enhance_hf", "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    first, second = fakes.vae.encoded
    assert torch.equal(first, read_last_frames(clip, 9, 32, 48)[-5:])
    assert first.shape == (5, 32, 48, 3)
    assert _frames_of(output) == long_video_frames(9, 5, 1)
    assert torch.equal(second, torch.from_numpy(np.load(tmp_path / "moto.segments" / "segment_000.npy"))[-5:])


def test_block_swap_keeps_the_condition_cache_in_host_memory_too(spec, fakes, tiny_root, tmp_path, denoise_calls):
    """Weights in host memory (block swap): the conditioning frames' KV cache goes there too, and
    the segment folder does not count it as a setting (the same video either way)."""
    from frametuner.config import TrainConfig

    config = TrainConfig(model_flavour="tiny", mixed_precision="no", musubi_blocks_to_swap=1)
    request = _request(tmp_path, segments=1)
    outputs = sample_video(request, spec=spec, root=tiny_root, dtype=torch.float32, progress=False, config=config)
    assert [call.get("offload_kv_cache") for call in denoise_calls] == [None, True]
    manifest = json.loads((tmp_path / "long.segments" / "manifest.json").read_text())["settings"]
    assert "offload_kv_cache" not in manifest["sampler_options"]
    plain = sample_video(_request(tmp_path, "plain.mp4", segments=1), spec=spec, root=tiny_root, dtype=torch.float32, progress=False)
    assert torch.equal(outputs.frames, plain.frames)
