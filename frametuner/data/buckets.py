"""Bucket geometry: which size and frame count a clip trains at, and how it is cropped.

Pure functions of numbers (no files), so the rules are easy to test and to read.
"""

from __future__ import annotations

import math
import random

from ..models.spec import largest_valid_frames  # the frame rule's one home (re-exported for data users)
from .sample import Bucket, CropBox

MAX_UPSCALE = 4.0  # a source scaled up more than this to its bucket is warned about (blurry)
MAX_CROPPED = 0.30  # a bucket that crops away more than this share of a source is warned about


def round_to_grid(value: float, alignment: int) -> int:
    """Nearest multiple of ``alignment`` (half rounds up), at least one ``alignment``."""
    return max(alignment, int(math.floor(value / alignment + 0.5)) * alignment)


def bucket_size(height: int, width: int, *, alignment: int, area: int | None = None, shorter_edge: int | None = None) -> tuple[int, int]:
    """(height, width) on the ``alignment`` grid, keeping the source aspect ratio.

    ``area``: the size whose pixel count is closest to ``area`` (``pixel_area``);
    ``shorter_edge``: the shorter side scaled to that length (``pixel``).
    """
    if (area is None) == (shorter_edge is None):
        raise ValueError("give exactly one of area or shorter_edge")
    if area is not None:
        aspect = width / height
        return round_to_grid(math.sqrt(area / aspect), alignment), round_to_grid(math.sqrt(area * aspect), alignment)
    scale = shorter_edge / min(height, width)
    return round_to_grid(height * scale, alignment), round_to_grid(width * scale, alignment)


def frames_on_interval(available: int, interval: int) -> int:
    """``resolution_frames``: round down to ``1 + interval*k`` (interval is a multiple of the stride)."""
    return 0 if available < 1 else 1 + (available - 1) // interval * interval


def crop_box(height: int, width: int, bucket: Bucket, mode: str, rng: random.Random | None = None) -> CropBox:
    """How a (height, width) source fills ``bucket``: scale to cover it, then crop.

    ``center``/``random`` keep the aspect ratio (cropping the overflow), ``none``
    stretches to the bucket. ``rng`` picks the random offset (seeded per file by the scan).
    """
    target = (bucket.height, bucket.width)
    if mode == "none":
        return CropBox(resize=target, top=0, left=0, size=target)
    scale = max(bucket.height / height, bucket.width / width)
    resize = (max(bucket.height, round(height * scale)), max(bucket.width, round(width * scale)))
    spare_h, spare_w = resize[0] - bucket.height, resize[1] - bucket.width
    if mode == "random":
        rng = rng or random.Random(0)
        top, left = rng.randint(0, spare_h), rng.randint(0, spare_w)
    elif mode == "center":
        top, left = spare_h // 2, spare_w // 2
    else:
        raise ValueError(f"unknown crop mode {mode!r}; use center, random or none")
    return CropBox(resize=resize, top=top, left=left, size=target)


def window_start(available: int, frames: int, mode: str, rng: random.Random | None = None) -> int:
    """First of ``frames`` consecutive selected frames out of ``available``."""
    spare = max(0, available - frames)
    if mode == "start":
        return 0
    if mode == "center":
        return spare // 2
    if mode == "random":
        return (rng or random.Random(0)).randint(0, spare)
    raise ValueError(f"unknown window {mode!r}; use start, center or random")


def upscale_factor(height: int, width: int, crop: CropBox) -> float:
    """How much a (height, width) source is enlarged to reach its bucket (1 = not at all, < 1 = shrunk)."""
    return max(crop.resize[0] / height, crop.resize[1] / width)


def cropped_share(crop: CropBox) -> float:
    """Share of the resized source that the crop cuts away (0 for a stretch, ``crop`` 'none')."""
    return 1.0 - (crop.size[0] * crop.size[1]) / (crop.resize[0] * crop.resize[1])
