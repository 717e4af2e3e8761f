"""Which frames of a clip the captioner looks at, decoded with the project's PyAV code.

A clip of ``N`` frames captioned from ``F`` frames uses frame ``round(i * (N - 1) / (F - 1))``
for ``i = 0 .. F-1``: evenly spread, the first and the last frame included, halves rounded
to even (the sampling of qwen-vl-utils, ``torch.linspace(0, N - 1, F).round()``, computed
here exactly with fractions). ``F`` is the requested count, capped at ``N`` and rounded
down to a multiple of the model's temporal patch (2 for Qwen2.5-VL: the vision tower
packs frames in pairs); a one-frame clip is shown as its single frame.

Frames are resized by swscale while decoding (``frametuner.data.media``) straight to the
size the model's processor would resize them to, so the processor's own resize is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Literal

import numpy as np


def frame_count(total: int, requested: int, factor: int = 1) -> int:
    """Frames taken from a clip of ``total`` frames: ``requested`` capped at ``total``,
    rounded down to a multiple of ``factor`` (at least one frame)."""
    if total < 1 or requested < 1 or factor < 1:
        raise ValueError(f"need at least one frame (total {total}, requested {requested}, factor {factor})")
    count = min(requested, total)
    if count >= factor:
        count -= count % factor
    return count


def uniform_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``total`` frames, first and last included."""
    if not 1 <= count <= total:
        raise ValueError(f"cannot pick {count} of {total} frames")
    if count == 1:
        return [0]
    return [round(Fraction(i * (total - 1), count - 1)) for i in range(count)]


SizeFn = Callable[[int, int, int], tuple[int, int]]  # (height, width, frames) -> resized (height, width)


@dataclass
class Media:
    """One clip or image, decoded for the captioner: uint8 ``[F, H, W, 3]`` frames."""

    path: Path
    kind: Literal["video", "image"]
    frames: np.ndarray
    indices: list[int] = field(default_factory=list)  # frames of the source (videos)
    total_frames: int = 1
    fps: float = 0.0  # the source's frame rate (videos)

    @property
    def sampled_fps(self) -> float:
        """Frames per second of what the model sees (``len(indices) / total * fps``)."""
        return len(self.indices) / self.total_frames * self.fps if self.fps > 0 else 0.0


def load_video(path: Path, frames: int, size: SizeFn, factor: int = 1) -> Media:
    """``frames`` evenly spread frames of a clip, resized to ``size(height, width, count)``;
    raises :class:`~frametuner.data.media.DecodeError` for a file that does not decode."""
    from ..data.media import decode_frames, probe_video
    from ..data.sample import CropBox

    probe = probe_video(path)
    total = len(probe.pts)
    count = frame_count(total, frames, factor)
    indices = uniform_indices(total, count)
    height, width = size(probe.info.height, probe.info.width, count)
    crop = CropBox(resize=(height, width), top=0, left=0, size=(height, width))
    array = decode_frames(probe.info, indices, crop, probe.pts)
    return Media(path=Path(path), kind="video", frames=array, indices=indices, total_frames=total, fps=probe.info.fps)


def load_image(path: Path, size: SizeFn) -> Media:
    """An image (EXIF orientation applied) resized to ``size(height, width, 1)``."""
    from ..data.media import decode_image, probe_image
    from ..data.sample import CropBox

    info = probe_image(path)
    height, width = size(info.height, info.width, 1)
    crop = CropBox(resize=(height, width), top=0, left=0, size=(height, width))
    return Media(path=Path(path), kind="image", frames=decode_image(path, crop), indices=[0])
