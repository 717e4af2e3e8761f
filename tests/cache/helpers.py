"""Build ``Sample`` records over small real files, and a deterministic synthetic pixel loader."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from frametuner.data import Bucket, CropBox, Sample, SourceInfo

BUCKET = Bucket(height=16, width=32, frames=5)


def source_info(path: Path, *, frames: int = 9, height: int = 64, width: int = 96, fps: float = 15.0) -> SourceInfo:
    stat = path.stat()
    return SourceInfo(path=path, size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns, frames=frames, fps=fps, height=height, width=width)


def write_sources(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"clip{index}.bin"
        path.write_bytes(bytes([index]) * (100 + index))
        paths.append(path)
    return paths


def make_sample(path: Path, caption: str, *, bucket: Bucket = BUCKET, crop_top: int = 0, is_i2v: bool = False, image: Path | None = None) -> Sample:
    return Sample(
        dataset_id="test",
        source=source_info(path),
        caption=caption,
        media_type="video",
        frame_indices=tuple(range(bucket.frames)),
        crop=CropBox(resize=(bucket.height + 8, bucket.width), top=crop_top, left=0, size=(bucket.height, bucket.width)),
        bucket=bucket,
        is_i2v=is_i2v,
        conditioning_image=source_info(image, frames=1, fps=0) if image is not None else None,
    )


def touch(path: Path) -> None:
    """Change the file's mtime (what an edit does to the fingerprint) without changing its size."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


class SyntheticPixels:
    """Pixels that depend only on (file bytes, frames, crop), like a real decoder; counts its calls."""

    def __init__(self):
        self.calls = 0

    def _pixels(self, path: Path, frames: int, height: int, width: int, salt: str) -> torch.Tensor:
        self.calls += 1
        seed = int.from_bytes(hashlib.sha256(Path(path).read_bytes() + salt.encode()).digest()[:6], "little")
        return torch.randint(0, 256, (frames, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))

    def __call__(self, sample: Sample) -> torch.Tensor:
        bucket = sample.bucket
        return self._pixels(sample.source.path, bucket.frames, bucket.height, bucket.width, f"{sample.frame_indices}{sample.crop}")

    def image(self, sample: Sample) -> torch.Tensor:
        bucket = sample.bucket
        return self._pixels(sample.conditioning_image.path, 1, bucket.height, bucket.width, "image")[0]
