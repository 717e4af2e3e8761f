"""``frametuner demo``: a complete CPU run in a minute or two, no downloads.

The real clips users train on are not part of the package, so the demo draws its own:
short captioned clips of coloured shapes moving over a background, written with PyAV.
It then trains a LoRA on the tiny random model of a family (the default family's, or
``--model_family``'s) with the same code path as a real run (scan, cache, train,
validate, export).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

DEMO_CONFIG = Path(__file__).resolve().parent / "examples" / "demo_config.json"

CLIPS = [
    ("red_ball", "a red ball bouncing on a wooden floor", (220, 40, 40), "bounce", (150, 110, 70)),
    ("blue_square", "a blue square sliding from left to right over grass", (40, 70, 220), "slide", (60, 140, 60)),
    ("yellow_sun", "a yellow circle rising into a dark blue sky", (240, 220, 50), "rise", (20, 30, 90)),
    ("green_box", "a green square moving in a circle on a grey wall", (50, 200, 80), "orbit", (120, 120, 120)),
]


def _frames(color, motion, background, frames: int, height: int, width: int) -> np.ndarray:
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    size = height // 5
    for index in range(frames):
        phase = index / max(1, frames - 1)
        if motion == "bounce":
            cy, cx = height - size - abs(math.sin(phase * 2 * math.pi)) * (height - 2 * size), width / 2
        elif motion == "slide":
            cy, cx = height / 2, size + phase * (width - 2 * size)
        elif motion == "rise":
            cy, cx = height - size - phase * (height - 2 * size), width / 2
        else:
            cy, cx = height / 2 + 0.3 * height * math.sin(2 * math.pi * phase), width / 2 + 0.3 * width * math.cos(2 * math.pi * phase)
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[:] = background
        frame[:, :, :] += (8 * (yy[..., None] // 8 % 2)).astype(np.uint8)  # a little texture
        if motion in ("bounce", "rise"):
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= size**2
        else:
            inside = (abs(yy - cy) <= size) & (abs(xx - cx) <= size)
        frame[inside] = color
        video[index] = frame
    return video


def write_demo_clips(folder: str | Path, *, frames: int = 17, height: int = 64, width: int = 96, fps: int = 15) -> Path:
    """Write the synthetic clips (mp4 + caption txt) into ``folder``; returns it."""
    from .sampling.video import write_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, caption, color, motion, background in CLIPS:
        path = folder / f"{name}.mp4"
        if not path.exists():
            import torch

            write_video(torch.from_numpy(_frames(color, motion, background, frames, height, width)), path, fps=fps, crf=12)
        (folder / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def prepare_demo(directory: str | Path) -> Path:
    """A demo folder: config.json, datasets.json and clips/; returns the config path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_demo_clips(directory / "clips")
    config = directory / "config.json"
    if not config.exists():
        shutil.copyfile(DEMO_CONFIG, config)
    datasets = directory / "datasets.json"
    if not datasets.exists():
        datasets.write_text(json.dumps(DEMO_DATASETS, indent=2) + "\n")
    return config


DEMO_DATASETS = [
    {
        "id": "demo",
        "type": "local",
        "instance_data_dir": "clips",
        "dataset_type": "video",
        "caption_strategy": "textfile",
        "resolution": "64x96",
        "resolution_type": "pixel_area",
        "crop": "center",
        "repeats": 3,
        "video": {"num_frames": 9, "bucket_strategy": "aspect_ratio"},
    }
]
