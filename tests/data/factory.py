"""Tiny synthetic media for the data tests, written with PyAV and Pillow.

Clip frames are flat grey with a level that encodes the frame index
(``level = BASE + STEP * index``), so the frames a decoder returned can be read back
from the pixels and compared with the frames that were asked for.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

BASE, STEP = 10, 6  # levels 10..244 for 40 frames; H.264 round trip error stays < STEP / 2


def level_of(index: int) -> int:
    return BASE + STEP * index


def indices_from_pixels(frames) -> list[int]:
    """Frame indices read back from decoded frames ``[F, H, W, 3]`` (the grey level oracle)."""
    means = np.asarray(frames, dtype=np.float32).reshape(len(frames), -1).mean(axis=1)
    return [int(round((m - BASE) / STEP)) for m in means]


def write_clip(
    path: Path,
    frames: int = 24,
    *,
    height: int = 64,
    width: int = 96,
    fps: int = 30,
    timestamps_ms: list[int] | None = None,
    rotation: int = 0,
    faststart: bool = False,
    pattern: str = "index",
    gop: int | None = None,
) -> Path:
    """An H.264 clip; ``timestamps_ms`` gives variable frame times, ``rotation`` a display matrix,
    ``gop`` a keyframe every ``gop`` frames with B-frames (so seeking and reordering matter).

    ``pattern``: "index" (grey level = frame index) or "left_half" (left half white).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "qp": "0"}
        if gop is not None:
            stream.codec_context.gop_size, stream.codec_context.max_b_frames = gop, 2
            stream.options = {"preset": "fast", "crf": "4", "keyint_min": str(gop), "sc_threshold": "0"}
        if timestamps_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for index in range(frames):
            if pattern == "left_half":
                array = np.zeros((height, width, 3), np.uint8)
                array[:, : width // 2] = 255
            else:
                array = np.full((height, width, 3), level_of(index), np.uint8)
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if timestamps_ms is not None:
                frame.pts, frame.time_base = timestamps_ms[index], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(path: Path, height: int = 64, width: int = 96, *, level: int = 128, exif_orientation: int | None = None, pattern: str = "flat") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((height, width, 3), level, np.uint8)
    if pattern == "left_half":
        array[:] = 0
        array[:, : width // 2] = 255
    elif pattern == "gradient":
        array[..., 0] = np.linspace(0, 255, width, dtype=np.float32)[None, :].astype(np.uint8)
        array[..., 1] = np.linspace(0, 255, height, dtype=np.float32)[:, None].astype(np.uint8)
    image = Image.fromarray(array)
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif.tobytes(), quality=95)
    else:
        image.save(path)
    return path


def write_caption(media: Path, text: str | bytes) -> Path:
    caption = media.with_suffix(".txt")
    if isinstance(text, bytes):
        caption.write_bytes(text)
    else:
        caption.write_text(text, encoding="utf-8")
    return caption


def write_configs(folder: Path, datasets: list[dict], **config) -> Path:
    """A datasets.json and a config.json pointing at it (relative path, as users write it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datasets.json").write_text(json.dumps(datasets, indent=2))
    settings = {"data_backend_config": "datasets.json", "aspect_bucket_alignment": 16, "seed": 7, **config}
    path = folder / "config.json"
    path.write_text(json.dumps(settings, indent=2))
    return path


def dataset(id: str, folder: str, **entry) -> dict:
    """A dataset entry with small test-friendly defaults (area 64x96, 17-frame samples)."""
    video = {"num_frames": 17, **entry.pop("video", {})}
    base = {"id": id, "type": "local", "instance_data_dir": folder, "resolution": "64x96"}
    if entry.get("dataset_type") != "image":
        base["video"] = video
    return {**base, **entry}
