"""What people look at: H.264 mp4 files (PyAV) and contact-sheet PNGs (Pillow).

Frames are ``uint8 [F, H, W, 3]`` RGB (numpy array or torch tensor), as the VAE decoder
returns them. Every file is written to a temporary name beside the target and moved into
place, so a viewer (or the web UI polling the folder) never sees half a file.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..storage import disk_errors

DEFAULT_CRF = 18  # upstream writes its demos with libx264 at crf 18


def as_uint8_frames(frames) -> np.ndarray:
    """``[F, H, W, 3]`` uint8 numpy array from a numpy array or torch tensor."""
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    return frames


def temporary_beside(path: Path) -> Path:
    """A hidden name in the same folder, so ``os.replace`` into ``path`` is atomic."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p halves the chroma resolution, so H.264 needs even sizes: repeat the last row/column."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def write_video(frames, path: str | Path, *, fps: float = 15, crf: int = DEFAULT_CRF) -> Path:
    """Write an H.264 (libx264, yuv420p) mp4 that browsers play; odd sizes are padded by one pixel."""
    import av

    frames = _pad_to_even(as_uint8_frames(frames))
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in 0..51 (lower = better quality), got {crf}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_errors(path.parent, f"writing the video {path.name}"):
        temporary = temporary_beside(path)
        try:
            # faststart moves the index to the front so a browser can start playing before the end arrives.
            with av.open(str(temporary), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = frames.shape[2], frames.shape[1]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf)}
                for frame in frames:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                container.mux(stream.encode(None))
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------- contact sheets
@dataclass(frozen=True)
class SheetLayout:
    """Where each picked frame goes on a contact sheet."""

    frame_indices: tuple[int, ...]
    columns: int
    rows: int
    tile_size: tuple[int, int]  # (width, height)
    caption_height: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole sheet: the grid plus the caption strip below it."""
        return self.columns * self.tile_size[0], self.rows * self.tile_size[1] + self.caption_height


CAPTION_FONT_SIZE = 14
CAPTION_LINES = 4  # "step N" + up to three lines of prompt
CAPTION_PADDING = 6


def _caption_font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=CAPTION_FONT_SIZE)
    except TypeError:  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _line_height(font) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent + 2


def sheet_layout(num_frames: int, height: int, width: int, *, count: int = 8, columns: int = 4, max_tile_width: int = 320) -> SheetLayout:
    """Pick ``count`` evenly spaced frames (first and last included) and size the grid.

    Tiles keep the video's aspect ratio and are at most ``max_tile_width`` wide.
    """
    if num_frames < 1 or count < 1 or columns < 1:
        raise ValueError(f"need at least one frame, count and column (got {num_frames}, {count}, {columns})")
    indices = tuple(sorted(set(np.rint(np.linspace(0, num_frames - 1, min(count, num_frames))).astype(int).tolist())))
    columns = min(columns, len(indices))
    rows = -(-len(indices) // columns)
    scale = min(1.0, max_tile_width / width)
    tile = (max(1, round(width * scale)), max(1, round(height * scale)))
    caption = CAPTION_LINES * _line_height(_caption_font()) + 2 * CAPTION_PADDING
    return SheetLayout(indices, columns, rows, tile, caption)


def _caption_lines(prompt: str, step: int | None, font, width: int) -> list[str]:
    """``step N`` then the prompt wrapped to the sheet width, cut with an ellipsis if longer."""
    average = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz") / 26)
    chars_per_line = max(8, int((width - 2 * CAPTION_PADDING) / average))
    lines = textwrap.wrap(prompt, chars_per_line) or [""]
    room = CAPTION_LINES - (step is not None)
    if len(lines) > room:
        lines = lines[:room]
        lines[-1] = lines[-1][: chars_per_line - 1].rstrip() + "…"
    return ([f"step {step}"] if step is not None else []) + lines


def contact_sheet(frames, *, prompt: str = "", step: int | None = None, count: int = 8, columns: int = 4, max_tile_width: int = 320):
    """A ``PIL.Image``: a grid of evenly spaced frames with the step and prompt in a strip below."""
    from PIL import Image, ImageDraw

    frames = as_uint8_frames(frames)
    layout = sheet_layout(frames.shape[0], frames.shape[1], frames.shape[2], count=count, columns=columns, max_tile_width=max_tile_width)
    sheet = Image.new("RGB", layout.size, "white")
    tile_w, tile_h = layout.tile_size
    for slot, index in enumerate(layout.frame_indices):
        tile = Image.fromarray(frames[index])
        if tile.size != layout.tile_size:
            tile = tile.resize(layout.tile_size, Image.Resampling.LANCZOS)
        sheet.paste(tile, ((slot % layout.columns) * tile_w, (slot // layout.columns) * tile_h))
    draw = ImageDraw.Draw(sheet)
    font = _caption_font()
    top = layout.rows * tile_h + CAPTION_PADDING
    for line in _caption_lines(prompt, step, font, layout.size[0]):
        draw.text((CAPTION_PADDING, top), line, fill="black", font=font)
        top += _line_height(font)
    return sheet


def write_contact_sheet(frames, path: str | Path, **kwargs) -> Path:
    """Write :func:`contact_sheet` as a PNG (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_errors(path.parent, f"writing the contact sheet {path.name}"):
        temporary = temporary_beside(path)
        try:
            contact_sheet(frames, **kwargs).save(temporary, format="PNG")
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return path
