"""Real files from ../shared: a 4K H.264 clip at native and lower fps, a PNG as i2v condition."""

from __future__ import annotations

import shutil

import av
import numpy as np
import pytest
from PIL import Image

from frametuner.config import load_config
from frametuner.data import load_clip, load_conditioning_image, scan_datasets

from ..conftest import media_file
from .factory import dataset, write_caption, write_clip, write_configs


@pytest.mark.slow
def test_motorcycle_decodes_to_expected_frames_at_native_and_lower_fps(tmp_path):
    source = media_file("motorcycle.mp4")
    with av.open(str(source)) as container:  # the oracle: the container's own header
        stream = container.streams.video[0]
        frames, rate = stream.frames, stream.average_rate
        height, width = stream.codec_context.height, stream.codec_context.width
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "motorcycle.mp4").symlink_to(source)
    write_caption(clips / "motorcycle.mp4", "a motorcycle")
    by_length = {"bucket_strategy": "resolution_frames", "frame_interval": 4, "num_frames": 201}
    config = load_config(
        write_configs(
            tmp_path,
            [
                dataset("native", "clips", resolution="144x256", video=by_length),
                dataset("half", "clips", resolution="144x256", video={**by_length, "fps": float(rate) / 2}),
            ],
        )
    )
    result = scan_datasets(config, summary=False)
    [native] = result.dataset_samples("native")
    [half] = result.dataset_samples("half")
    assert (native.source.frames, native.source.height, native.source.width) == (frames, height, width)
    assert native.source.fps == pytest.approx(float(rate))

    expected_native = frames - (frames - 1) % 4  # largest 4k+1 of all frames
    expected_half = frames // 2 - (frames // 2 - 1) % 4  # half the frames in the same duration
    assert native.bucket.key == f"144x256@{expected_native}"
    assert half.bucket.key == f"144x256@{expected_half}"
    assert half.frame_indices == tuple(range(0, 2 * expected_half, 2))

    native_clip, half_clip = load_clip(native), load_clip(half)
    assert native_clip.shape == (expected_native, 144, 256, 3)
    assert half_clip.shape == (expected_half, 144, 256, 3)
    # the lower rate is a selection of the same decoded frames, pixel for pixel
    assert np.array_equal(half_clip.numpy(), native_clip.numpy()[: 2 * expected_half : 2])
    assert native_clip.float().std() > 20  # real picture content, not a blank decode


def test_girl_png_works_as_a_conditioning_image(tmp_path):
    image_path = media_file("girl.png")
    clips = tmp_path / "clips"
    write_caption(write_clip(clips / "girl.mp4", 17), "a girl")
    shutil.copy(image_path, clips / "girl.png")
    result = scan_datasets(load_config(write_configs(tmp_path, [dataset("i2v", "clips", is_i2v=True)])), summary=False)
    [sample] = result.samples
    assert sample.conditioning_image.path.name == "girl.png"
    condition = load_conditioning_image(sample)
    assert condition.shape == (1, 64, 96, 3)

    # oracle: Pillow box-filters the square 2048 px image to cover 64x96 (96x96), then crops the middle rows
    with Image.open(image_path) as image:
        expected = np.asarray(image.convert("RGB").resize((96, 96), Image.Resampling.BOX), dtype=np.float32)[16:80]
    difference = np.abs(condition[0].numpy().astype(np.float32) - expected)
    assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 4  # a crop one row off: ~50
