"""Which frames the captioner sees: the documented indices, and the pixels of exactly those frames."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from frametuner.caption.frames import frame_count, load_image, load_video, uniform_indices
from tests.data.factory import indices_from_pixels, write_clip, write_image


def test_uniform_indices_are_the_documented_frames():
    # round(i * (N - 1) / (F - 1)), first and last included; halves round to even
    assert uniform_indices(100, 16) == [0, 7, 13, 20, 26, 33, 40, 46, 53, 59, 66, 73, 79, 86, 92, 99]
    assert uniform_indices(40, 8) == [0, 6, 11, 17, 22, 28, 33, 39]
    assert uniform_indices(5, 5) == [0, 1, 2, 3, 4]
    assert uniform_indices(7, 1) == [0]
    # 3 of 6: 0, 2.5 -> 2 (half to even), 5
    assert uniform_indices(6, 3) == [0, 2, 5]
    # qwen-vl-utils' torch.linspace(0, N-1, F).round() (numpy rint also rounds halves to even)
    for total in (2, 17, 93, 240, 1001):
        for count in (2, 4, 8, 16, 32):
            if count <= total:
                expected = np.rint(np.linspace(0, total - 1, count)).astype(int).tolist()
                exact = [round(Fraction(i * (total - 1), count - 1)) for i in range(count)]
                assert uniform_indices(total, count) == exact
                assert sum(a != b for a, b in zip(exact, expected)) <= 1  # float linspace may tip one exact half


def test_frame_count_caps_and_rounds_to_the_temporal_patch():
    assert frame_count(100, 16, 2) == 16
    assert frame_count(9, 16, 2) == 8  # capped at the clip, then even
    assert frame_count(15, 15, 2) == 14
    assert frame_count(1, 16, 2) == 1  # a one-frame clip is its frame
    with pytest.raises(ValueError):
        frame_count(0, 16, 2)


def test_load_video_decodes_exactly_the_picked_frames(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 40, height=64, width=96)
    seen = []

    def size(height, width, frames):
        seen.append((height, width, frames))
        return 56, 84

    media = load_video(clip, 8, size, factor=2)
    assert seen == [(64, 96, 8)]
    assert media.indices == [0, 6, 11, 17, 22, 28, 33, 39]
    assert media.frames.shape == (8, 56, 84, 3) and media.frames.dtype == np.uint8
    assert indices_from_pixels(media.frames) == media.indices  # the grey level of frame i encodes i
    assert media.total_frames == 40 and media.fps == pytest.approx(30.0)
    assert media.sampled_fps == pytest.approx(8 / 40 * 30.0)


def test_load_image_is_one_frame_at_the_asked_size(tmp_path):
    image = write_image(tmp_path / "still.png", 80, 120, level=100)
    media = load_image(image, lambda h, w, f: (56, 84))
    assert media.kind == "image" and media.frames.shape == (1, 56, 84, 3)
    assert abs(float(media.frames.mean()) - 100) < 1.0
