"""What a user is told about media that is not what it seems: a still image named like a
video, a tiny clip blown up to its bucket, a resolution whose buckets crop most of each frame."""

from __future__ import annotations

import re
import shutil

import av
import numpy as np
import pytest

from frametuner.cli import main
from frametuner.config import load_config
from frametuner.data import scan_datasets
from frametuner.data.media import DecodeError, probe_video

from .factory import dataset, write_caption, write_clip, write_configs, write_image

IMAGE_REASON = "not a video (image, use it as a conditioning image or convert it)"


def scan(tmp_path, datasets, **config):
    return scan_datasets(load_config(write_configs(tmp_path, datasets, **config)), summary=False, require_samples=False)


def write_tiny_clip(path, size: int, frames: int = 24):
    """A real H.264 (RGB) clip of ``size`` x ``size`` pixels: x264's yuv420 needs even sizes, RGB does not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=15)
        stream.width = stream.height = size
        stream.pix_fmt = "rgb24"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 8 * index, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_a_still_image_named_like_a_video_is_not_a_video(tmp_path, suffix):
    clips = tmp_path / "clips"
    image = write_image(tmp_path / f"still{suffix}")
    clips.mkdir()
    shutil.copy(image, clips / "still.mp4")
    write_caption(clips / "still.mp4", "a still")
    write_caption(write_clip(clips / "one_frame.mp4", 1), "a real video, too short")  # stays too_short
    with pytest.raises(DecodeError) as caught:
        probe_video(clips / "still.mp4")
    assert f"{caught.value.reason} ({caught.value.detail})" == IMAGE_REASON
    result = scan(tmp_path, [dataset("clips", "clips")])
    lines = {s.path.name: s.line() for s in result.skipped}
    assert lines["still.mp4"] == f"skipped {clips / 'still.mp4'}: {IMAGE_REASON}"
    assert {s.path.name: s.reason for s in result.skipped}["one_frame.mp4"] == "too_short"


def test_a_clip_upscaled_more_than_4x_is_accepted_with_a_warning(tmp_path):
    clips = tmp_path / "clips"
    for size in (1, 30, 32):
        write_caption(write_tiny_clip(clips / f"px{size}.mp4", size), f"{size} pixels")
    result = scan(tmp_path, [dataset("clips", "clips", resolution="96x160")], aspect_bucket_alignment=64)
    samples = {s.source.path.name: s for s in result.samples}
    assert set(samples) == {"px1.mp4", "px30.mp4", "px32.mp4"}  # still trained on
    bucket = samples["px1.mp4"].bucket
    assert (bucket.height, bucket.width) == (128, 128)  # area 96*160 on the 64-pixel grid, square
    warnings = [line for line in result.warnings() if "upscaled" in line]
    assert len(warnings) == 2, warnings  # 1 px: 128x; 30 px: 4.3x; 32 px: exactly 4x, no warning
    assert warnings[0].startswith(f"{clips / 'px1.mp4'}: 1x1 is upscaled 128x to its bucket 128x128")
    assert warnings[1].startswith(f"{clips / 'px30.mp4'}: 30x30 is upscaled 4.27x to its bucket 128x128")  # 128 / 30


def test_data_inspect_warns_when_a_bucket_crops_away_most_of_a_clip(tmp_path, capsys):
    clips = tmp_path / "clips"
    for name in ("a", "b"):
        write_caption(write_clip(clips / f"{name}.mp4", 17, height=90, width=160), f"wide {name}")  # 16:9
    config = write_configs(tmp_path, [dataset("clips", "clips", resolution="96x160")], aspect_bucket_alignment=64)  # the 13.6B model's grid
    assert main(["data", "inspect", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    # 96x160 = 15360 px on a 64-pixel grid: 64x192, 3:1. A 90x160 frame scaled to cover it is
    # 108x192, of which 64 rows stay: 1 - 64/108 = 40.7% cropped away.
    cropped = 1 - 64 / (90 * 192 / 160)
    warning = re.search(r"warning: dataset 'clips': bucket 64x192@17 .* crops away up to (\d+)% of each frame of 2 file\(s\)", out)
    assert warning and int(warning.group(1)) == round(100 * cropped), out
    assert "e.g. a.mp4 (90x160, 1.78:1): resolution '96x160' on the 64-pixel grid gives this bucket" in out
    assert "(3.00:1)" in out and "aspect_bucket_alignment" in out

    # A resolution with the clips' shape crops (almost) nothing: no warning.
    config = write_configs(tmp_path, [dataset("clips", "clips", resolution="288x512")], aspect_bucket_alignment=64)
    assert main(["data", "inspect", "--config", str(config)]) == 0
    assert "warning:" not in capsys.readouterr().out
