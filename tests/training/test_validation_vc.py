"""Continuation and long-video validation: the stitching, the gallery, and `train` end to end."""

from __future__ import annotations

import json
import re

import av
import pytest
import torch

from frametuner.models.longcat_video.tiny import build_tiny_transformer, build_tiny_vae
from frametuner.models.longcat_video.vae import VideoVAE
from frametuner.models.registry import load_spec
from frametuner.sampling.gallery import ValidationRecord, write_index
from frametuner.sampling.validation import continue_frames, read_last_frames, render_long_validation

from .test_pipeline import clips, run  # noqa: F401  (the module's demo clips fixture)


@pytest.mark.slow
def test_a_long_video_stitches_segments_without_repeating_the_conditioning_frames(tmp_path):
    spec = load_spec("longcat_video")
    model, vae = build_tiny_transformer().eval(), VideoVAE(build_tiny_vae(), identity="tiny", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 4, 64, generator=g)
    mask = torch.ones(1, 4, dtype=torch.int64)
    first = torch.randint(0, 256, (9, 16, 16, 3), generator=g, dtype=torch.uint8)
    from frametuner.models.family import TextConditioning
    from frametuner.sampling.pipeline import VideoSettings

    conditioning = TextConditioning(text, mask, None, None)
    settings = VideoSettings(height=16, width=16, num_frames=9, steps=2, guidance=1.0, seed=11)
    out = render_long_validation(model, vae, first, spec=spec, validation_dir=tmp_path, step=7, prompt_index=0, prompt="p",
                                 text=conditioning, video=settings, segments=2, cond_frames=5)
    frames = out.frames
    assert frames.shape[0] == 9 + 2 * (9 - 5)
    # Oracle: the segments rendered one by one, each from the previous one's last 5 frames.
    common = dict(spec=spec, prompt_embeds=text, prompt_mask=mask, negative_embeds=None, negative_mask=None,
                  height=16, width=16, num_frames=9, steps=2, guidance=1.0, device=torch.device("cpu"))
    one = continue_frames(model, vae, first[-5:], seed=12, **common)
    two = continue_frames(model, vae, one[-5:], seed=13, **common)
    assert torch.equal(frames[:9], first) and torch.equal(frames[9:13], one[5:]) and torch.equal(frames[13:], two[5:])
    # Each segment is conditioned: its first 5 frames come back from the clean latents, not from noise.
    assert (one[:5].float() - vae.decode(vae.encode(first[-5:])).float()).abs().max() <= 1
    assert [p.name for p in out.segment_sheets] == [f"step000007_prompt00_long_seg{n:02d}.png" for n in range(3)]
    record = json.loads(out.record.read_text())
    assert record["kind"] == "long" and record["settings"]["total_frames"] == 17
    with av.open(str(out.video)) as container:
        assert len(list(container.decode(video=0))) == 17


def test_the_index_has_a_column_per_prompt_and_kind_with_segment_sheets(tmp_path):
    ValidationRecord(0, 0, "cat", video="a.mp4").save(tmp_path)
    ValidationRecord(0, 0, "cat", video="b.mp4", kind="long", segment_sheets=["s0.png", "s1.png"]).save(tmp_path)
    ValidationRecord(0, 1, "clip", video="c.mp4", kind="continuation").save(tmp_path)
    page = write_index(tmp_path).read_text()
    assert re.findall(r'<th class="prompt">([^<]+)</th>', page) == ["#0: cat", "#0 long video: cat", "#1 continuation: clip"]
    assert re.findall(r'<video src="([^"]+)"', page) == ["a.mp4", "b.mp4", "c.mp4"]
    assert re.findall(r'<img src="([^"]+)"', page) == ["s0.png", "s1.png"] and "segment 1" in page


def test_read_last_frames_takes_the_end_of_the_clip(tmp_path):
    from ..data.factory import indices_from_pixels, write_clip

    path = write_clip(tmp_path / "c.mp4", 20, height=64, width=96)
    frames = read_last_frames(path, 5, 32, 32)
    assert frames.shape == (5, 32, 32, 3) and indices_from_pixels(frames.numpy()) == [15, 16, 17, 18, 19]
    with pytest.raises(ValueError, match="fewer than the 21 conditioning frames"):
        read_last_frames(path, 21, 32, 32)


@pytest.mark.slow
def test_train_renders_continuation_and_long_validation_videos(clips, tmp_path):  # noqa: F811
    from ..data.factory import write_clip

    write_clip(tmp_path / "given.mp4", 12, height=64, width=96)
    events = run(
        clips, tmp_path / "vc", max_train_steps=1, validation_steps=100, validation_num_video_frames=9,
        validation_continuation=str(tmp_path / "given.mp4"), validation_cond_frames=5, validation_segments=1,
    )
    videos = [e for e in events if e["event"] == "validation"]
    assert [(e["step"], e["kind"]) for e in videos] == [(0, "prompt"), (0, "long"), (0, "continuation")] * 1 + [
        (1, "prompt"), (1, "long"), (1, "continuation")
    ]
    lengths = {}
    for event in videos:
        with av.open(str(tmp_path / "vc" / event["video"])) as container:
            lengths[event["kind"]] = len(list(container.decode(video=0)))
    assert lengths == {"prompt": 9, "continuation": 9, "long": 9 + (9 - 5)}
    long = [e for e in videos if e["kind"] == "long"][0]
    assert len(long["segment_sheets"]) == 2 and all((tmp_path / "vc" / p).exists() for p in long["segment_sheets"])
    continuation = json.loads((tmp_path / "vc" / "validation" / "step000000_prompt01_continuation.json").read_text())
    assert continuation["settings"]["cond_latent_frames"] == 2
    # Continuations sample as upstream's generate_vc does: KV cache and enhance_hf (the family's options).
    options = continuation["settings"]["sampler_options"]
    assert options["use_kv_cache"] is True and options["enhance_hf"] is True
    page = (tmp_path / "vc" / "validation" / "index.html").read_text()
    assert "#0 long video:" in page and "#1 continuation:" in page


def test_the_job_page_gets_the_kind_and_the_segment_sheets_inside_the_job_only(tmp_path):
    from frametuner.server.progress import RunProgress

    progress = RunProgress(tmp_path, tmp_path / "output")
    progress.apply({"event": "validation", "step": 3, "prompt_index": 0, "prompt": "p", "kind": "long", "video": "validation/a.mp4",
                    "segment_sheets": ["validation/s0.png", "../../elsewhere.png", "validation/s1.png"]})
    progress.apply({"event": "validation", "step": 3, "prompt_index": 0, "prompt": "p", "video": "validation/b.mp4"})
    long, plain = progress.public()["validations"]
    assert (long["kind"], long["segment_sheets"]) == ("long", ["output/validation/s0.png", "output/validation/s1.png"])
    assert (plain["kind"], plain["segment_sheets"]) == ("prompt", [])  # events written before kinds existed


def test_eval_dataset_clips_are_continued_from_their_cached_first_latent_frames():
    from types import SimpleNamespace

    from frametuner.config import TrainConfig
    from frametuner.data.sample import Bucket
    from frametuner.training.pipeline import ValidationPrompt, continuation_prompts

    config = TrainConfig(model_flavour="tiny", validation_continuation="eval_dataset", eval_dataset_id="ev",
                         validation_cond_frames=5, validation_num_video_frames=9)
    long_clip = SimpleNamespace(caption="a long clip", bucket=Bucket(32, 48, 9), source=SimpleNamespace(path="long.mp4"))
    short_clip = SimpleNamespace(caption="a short clip", bucket=Bucket(32, 48, 5), source=SimpleNamespace(path="short.mp4"))
    entries = {"long.mp4": torch.randn(16, 3, 4, 6), "short.mp4": torch.randn(16, 2, 4, 6)}
    scan = SimpleNamespace(dataset_samples=lambda dataset_id: [long_clip, short_clip] if dataset_id == "ev" else [])
    cache = SimpleNamespace(load=lambda sample: {"latents": entries[sample.source.path]})
    [item] = continuation_prompts(config, load_spec("longcat_video"), scan, cache, [ValidationPrompt("p", index=0)])
    # 5 frames = 2 latent frames; the 5-frame clip has nothing left to compare with and is skipped.
    assert (item.prompt, item.kind, item.index, item.size) == ("a long clip", "continuation", 1, (32, 48))
    assert torch.equal(item.cond_latents, entries["long.mp4"][:, :2])
