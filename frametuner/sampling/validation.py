"""Continuation and long-video validation renders (``validation_continuation``, ``validation_segments``).

A long validation video is the prompt's validation video followed by ``segments``
continuation segments, each conditioned on the last ``cond_frames`` frames of the one
before (VAE-encoded again, as upstream's long-video loop does) and stitched without
repeating them: ``num_frames + segments * (num_frames - cond_frames)`` frames. Each
segment also gets its own contact sheet, so drift from segment to segment shows at a
glance in ``validation/index.html`` and on the web UI's job page.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .gallery import ValidationRecord, write_index
from .long_video import continue_frames, read_last_frames  # noqa: F401  (one home: sampling.long_video)
from .pipeline import ValidationOutputs
from .video import DEFAULT_CRF, write_contact_sheet, write_video


def render_long_validation(
    model,
    vae,
    first: torch.Tensor,
    *,
    spec,
    validation_dir: str | Path,
    step: int,
    prompt_index: int,
    prompt: str,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    negative_embeds: torch.Tensor | None,
    negative_mask: torch.Tensor | None,
    segments: int,
    cond_frames: int,
    height: int,
    width: int,
    num_frames: int,
    steps: int,
    guidance: float,
    seed: int,
    fps: int = 15,
    crf: int = DEFAULT_CRF,
    device: torch.device | str | None = None,
) -> ValidationOutputs:
    """The long validation video that starts with ``first`` (the prompt's validation video,
    uint8 ``[num_frames, H, W, 3]``) and goes on for ``segments`` continuation segments.

    Writes ``step{step}_prompt{i}_long.mp4``, one contact sheet per segment
    (``..._long_seg{n}.png``), a sheet of the whole video and the JSON record the index reads.
    """
    folder = Path(validation_dir)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    record = ValidationRecord(step, prompt_index, prompt, kind="long")
    pieces, segment = [first], first
    sheets = [write_contact_sheet(first, folder / f"{record.stem}_seg00.png", prompt=prompt, step=step)]
    was_training = model.training
    model.eval()
    try:
        for number in range(1, segments + 1):
            segment = continue_frames(
                model, vae, segment[-cond_frames:], spec=spec, prompt_embeds=prompt_embeds, prompt_mask=prompt_mask,
                negative_embeds=negative_embeds, negative_mask=negative_mask, height=height, width=width,
                num_frames=num_frames, steps=steps, guidance=guidance, seed=seed + number, device=device,
            )
            new = segment[cond_frames:]  # the conditioning frames are already in the video
            pieces.append(new)
            sheets.append(write_contact_sheet(new, folder / f"{record.stem}_seg{number:02d}.png", prompt=f"segment {number}: {prompt}", step=step))
    finally:
        model.train(was_training)
    frames = torch.cat(pieces)
    video = write_video(frames, folder / f"{record.stem}.mp4", fps=fps, crf=crf)
    sheet = write_contact_sheet(frames, folder / f"{record.stem}.png", prompt=prompt, step=step)
    record.video, record.contact_sheet = video.name, sheet.name
    record.segment_sheets = [path.name for path in sheets]
    record.settings = dict(
        height=height, width=width, num_frames=num_frames, segments=segments, cond_frames=cond_frames, total_frames=len(frames),
        steps=steps, guidance=guidance, seed=seed, fps=fps, crf=crf,
    )
    return ValidationOutputs(
        record=record.save(folder), index=write_index(folder), video=video, contact_sheet=sheet, frames=frames, segment_sheets=sheets
    )
