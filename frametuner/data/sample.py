"""The record that flows from ``data/`` (scanning, buckets) to ``cache/`` (encoding).

A ``Sample`` says exactly which pixels one training example is made of: the source
file, which of its frames, how they are resized and cropped, and the bucket. Two
samples with the same :meth:`Sample.pixel_identity` decode to the same pixels, which is
what the latent cache keys on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, order=True)
class Bucket:
    """Pixel size and frame count shared by every clip of a batch."""

    height: int
    width: int
    frames: int

    @property
    def key(self) -> str:
        return f"{self.height}x{self.width}@{self.frames}"


@dataclass(frozen=True)
class CropBox:
    """Resize the source to ``resize`` (h, w), then take ``size`` (h, w) at ``(top, left)``."""

    resize: tuple[int, int]
    top: int
    left: int
    size: tuple[int, int]


@dataclass(frozen=True)
class SourceInfo:
    """What the scan learned about a file; ``fingerprint`` changes when the file does."""

    path: Path
    size_bytes: int
    mtime_ns: int
    frames: int  # 1 for images
    fps: float  # 0 for images
    height: int  # display size (rotation applied)
    width: int
    rotation: int = 0

    @property
    def fingerprint(self) -> str:
        return f"{self.path.resolve()}|{self.size_bytes}|{self.mtime_ns}"


@dataclass(frozen=True)
class Sample:
    dataset_id: str
    source: SourceInfo
    caption: str
    media_type: Literal["video", "image"]
    frame_indices: tuple[int, ...]  # indices into the decoded source frames, len == bucket.frames
    crop: CropBox
    bucket: Bucket
    is_i2v: bool = False
    conditioning_image: SourceInfo | None = None  # explicit image; None + is_i2v = the clip's first frame
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def batch_group(self) -> tuple[str, bool]:
        """``(bucket key, is_i2v)``: samples of one group share shapes and conditioning, so
        they can share a batch (the bucket sampler draws batches within a group)."""
        return self.bucket.key, self.is_i2v

    def pixel_identity(self) -> dict:
        """Everything that determines the clip's pixels (the latent cache key, with the encoder)."""
        return {
            "source": self.source.fingerprint,
            "frames": list(self.frame_indices),
            "crop": asdict(self.crop),
            "bucket": self.bucket.key,
        }

    def conditioning_identity(self) -> dict | None:
        if not self.is_i2v:
            return None
        if self.conditioning_image is None:
            return {"first_frame_of": self.source.fingerprint, "frame": self.frame_indices[0], "crop": asdict(self.crop)}
        return {"image": self.conditioning_image.fingerprint, "crop": asdict(self.crop)}
