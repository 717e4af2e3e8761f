"""mp4, contact sheet and index.html: decoded back and measured."""

from __future__ import annotations

import re

import av
import numpy as np
import pytest
from PIL import Image

from frametuner.sampling.gallery import ValidationRecord, write_index
from frametuner.sampling.video import contact_sheet, sheet_layout, write_contact_sheet, write_video

# Distinct, well separated colours so H.264 + yuv420p cannot blur one into another.
PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230], [250, 250, 250]],
    dtype=np.uint8,
)


def coloured_frames(count: int, height: int, width: int) -> np.ndarray:
    return np.broadcast_to(PALETTE[np.arange(count) % len(PALETTE)][:, None, None, :], (count, height, width, 3)).copy()


def decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return stream, frames


@pytest.mark.parametrize("fps", [15, 24])
def test_mp4_round_trip(tmp_path, fps):
    frames = coloured_frames(9, 32, 48)
    path = write_video(frames, tmp_path / "clip.mp4", fps=fps, crf=10)
    stream, decoded = decode(path)
    assert stream.codec_context.name == "h264"
    assert stream.codec_context.pix_fmt == "yuv420p"
    assert stream.average_rate == fps
    assert len(decoded) == 9
    assert decoded[0].shape == (32, 48, 3)
    # Each decoded frame is closest to the colour it was written with.
    for index, frame in enumerate(decoded):
        mean = frame.reshape(-1, 3).mean(0)
        assert np.argmin(((PALETTE.astype(float) - mean) ** 2).sum(1)) == index % len(PALETTE)
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_mp4_odd_size_is_padded_to_even(tmp_path):
    _, decoded = decode(write_video(coloured_frames(5, 31, 45), tmp_path / "odd.mp4", fps=15))
    assert len(decoded) == 5 and decoded[0].shape == (32, 46, 3)


def test_mp4_rejects_float_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(np.zeros((2, 16, 16, 3), dtype=np.float32), tmp_path / "x.mp4")


def test_contact_sheet_grid(tmp_path):
    frames = coloured_frames(9, 32, 48)
    layout = sheet_layout(9, 32, 48, count=8, columns=4)
    # linspace(0, 8, 8) rounded: frame 4 is the one left out.
    assert layout.frame_indices == (0, 1, 2, 3, 5, 6, 7, 8)
    assert (layout.columns, layout.rows, layout.tile_size) == (4, 2, (48, 32))
    path = write_contact_sheet(frames, tmp_path / "sheet.png", prompt="a red fox running through snow", step=100)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    assert sheet.shape == (2 * 32 + layout.caption_height, 4 * 48, 3)
    for slot, index in enumerate(layout.frame_indices):
        row, column = divmod(slot, 4)
        assert (sheet[row * 32 + 16, column * 48 + 24] == PALETTE[index % len(PALETTE)]).all()
    caption = sheet[2 * 32 :]
    assert (caption < 128).any(), "the caption strip has no text"


def test_contact_sheet_downscales_wide_videos_and_short_clips():
    layout = sheet_layout(93, 480, 832, count=8, columns=4, max_tile_width=208)
    assert layout.tile_size == (208, 120) and len(layout.frame_indices) == 8
    assert layout.frame_indices[0] == 0 and layout.frame_indices[-1] == 92
    sheet = contact_sheet(coloured_frames(1, 16, 16), prompt="x")
    assert sheet.size == (16, 16 + sheet_layout(1, 16, 16).caption_height)


def test_index_lists_videos_by_step_and_prompt(tmp_path):
    for step in (0, 100):
        for index, prompt in enumerate(["a <cat>", "a dog"]):
            ValidationRecord(step, index, prompt, video=f"step{step:06d}_prompt{index:02d}.mp4", contact_sheet=f"step{step:06d}_prompt{index:02d}.png").save(tmp_path)
    ValidationRecord(200, 0, "a <cat>", latents="step000200_prompt00.latents.safetensors").save(tmp_path)
    page = write_index(tmp_path).read_text()
    assert "a &lt;cat&gt;" in page and "<cat>" not in page
    rows = re.findall(r"<tr><th class=\"step\">step (\d+)</th>(.*?)</tr>", page)
    assert [int(step) for step, _ in rows] == [0, 100, 200]
    assert re.findall(r'<video src="([^"]+)"', rows[1][1]) == ["step000100_prompt00.mp4", "step000100_prompt01.mp4"]
    assert "decoding pending" in rows[2][1]
    assert "http" not in page, "the page must work offline"
