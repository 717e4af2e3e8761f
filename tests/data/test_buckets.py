"""Bucket geometry: sizes on the alignment grid, the 4k+1 frame rule, crops."""

from __future__ import annotations

import math
import random

import pytest

from frametuner.data.buckets import bucket_size, crop_box, frames_on_interval, largest_valid_frames, window_start
from frametuner.data.sample import Bucket


@pytest.mark.parametrize(
    "source, expected",
    [
        # area 480*832 = 399360 at 64 px: 16:9 -> h = sqrt(399360 / (16/9)) = 474 -> 448, w = 842.6 -> 832
        ((1080, 1920), (448, 832)),
        ((1920, 1080), (832, 448)),  # portrait: the transpose
        ((2048, 2048), (640, 640)),  # sqrt(399360) = 632 -> 640
        ((480, 640), (576, 704)),  # 4:3: h = 547.3 -> 576, w = 729.7 -> 704
        ((100, 2000), (128, 2816)),  # 20:1: h = 141.3 -> 128, w = 2826 -> 2816
    ],
)
def test_pixel_area_buckets_on_64_grid(source, expected):
    height, width = bucket_size(*source, alignment=64, area=480 * 832)
    assert (height, width) == expected
    assert height % 64 == 0 and width % 64 == 0
    # never further than half a grid step from the exact size of that area and aspect
    exact_h = math.sqrt(480 * 832 * source[0] / source[1])
    assert abs(height - exact_h) <= 32


def test_pixel_shorter_edge_buckets():
    assert bucket_size(1080, 1920, alignment=16, shorter_edge=480) == (480, 848)  # 853.3 -> 848
    assert bucket_size(1920, 1080, alignment=64, shorter_edge=480) == (832, 512)  # portrait; 480 is between 448 and 512: rounds up


def test_frame_rules():
    assert [largest_valid_frames(n, 4) for n in (0, 1, 4, 5, 60, 93, 94, 96, 97)] == [0, 1, 1, 5, 57, 93, 93, 93, 97]
    assert all((largest_valid_frames(n, 4) - 1) % 4 == 0 for n in range(1, 300))
    assert [frames_on_interval(n, 8) for n in (9, 16, 40, 60)] == [9, 9, 33, 57]
    assert frames_on_interval(100, 16) == 97 and (97 - 1) % 4 == 0


def test_crop_boxes():
    bucket = Bucket(height=64, width=96, frames=1)
    center = crop_box(200, 200, bucket, "center")  # square source: cover 96 wide -> 96x96, crop 16 top and bottom
    assert (center.resize, center.top, center.left, center.size) == ((96, 96), 16, 0, (64, 96))
    stretched = crop_box(200, 200, bucket, "none")
    assert (stretched.resize, stretched.top, stretched.left) == ((64, 96), 0, 0)
    offsets = {crop_box(200, 200, bucket, "random", random.Random(seed)).top for seed in range(50)}
    assert offsets <= set(range(33)) and len(offsets) > 10
    assert crop_box(200, 200, bucket, "random", random.Random(3)) == crop_box(200, 200, bucket, "random", random.Random(3))


def test_windows():
    assert window_start(40, 17, "start") == 0
    assert window_start(40, 17, "center") == 11
    assert {window_start(40, 17, "random", random.Random(s)) for s in range(100)} == set(range(24))
    assert window_start(10, 17, "center") == 0
