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
from ..models.family import TextConditioning
from .long_video import continue_frames, read_last_frames, stitch  # noqa: F401  (one home: sampling.long_video)
from .pipeline import ValidationOutputs, VideoSettings
from .video import write_contact_sheet, write_video


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
    text: TextConditioning,
    video: VideoSettings,
    segments: int,
    cond_frames: int,
    sampler_options: dict | None = None,
    device: torch.device | str | None = None,
) -> ValidationOutputs:
    """The long validation video that starts with ``first`` (the prompt's validation video,
    uint8 ``[num_frames, H, W, 3]``) and goes on for ``segments`` continuation segments
    (:func:`~frametuner.sampling.long_video.continue_frames`, seeds ``video.seed + n``, the
    family's continuation ``sampler_options``).

    Writes ``step{step}_prompt{i}_long.mp4``, one contact sheet per segment
    (``..._long_seg{n}.png``), a sheet of the whole video and the JSON record the index reads.
    """
    folder = Path(validation_dir)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    video = video.resolved(spec)
    record = ValidationRecord(step, prompt_index, prompt, kind="long")
    done = [first]
    sheets = [write_contact_sheet(first, folder / f"{record.stem}_seg00.png", prompt=prompt, step=step)]
    was_training = model.training
    model.eval()
    try:
        for number in range(1, segments + 1):
            segment = continue_frames(
                model, vae, done[-1][-cond_frames:], spec=spec, prompt_embeds=text.prompt_embeds, prompt_mask=text.prompt_mask,
                negative_embeds=text.negative_embeds, negative_mask=text.negative_mask, height=video.height, width=video.width,
                num_frames=video.num_frames, steps=video.steps, guidance=video.guidance, seed=video.seed + number,
                device=device, options=sampler_options,
            )
            done.append(segment)
            new = segment[cond_frames:]  # its first frames repeat the previous segment's last ones
            sheets.append(write_contact_sheet(new, folder / f"{record.stem}_seg{number:02d}.png", prompt=f"segment {number}: {prompt}", step=step))
    finally:
        model.train(was_training)
    frames = stitch(done, cond_frames)
    path = write_video(frames, folder / f"{record.stem}.mp4", fps=video.fps, crf=video.crf)
    sheet = write_contact_sheet(frames, folder / f"{record.stem}.png", prompt=prompt, step=step)
    record.video, record.contact_sheet = path.name, sheet.name
    record.segment_sheets = [p.name for p in sheets]
    record.settings = dict(
        video.record(), segments=segments, cond_frames=cond_frames, total_frames=len(frames), sampler_options=dict(sampler_options or {})
    )
    return ValidationOutputs(
        record=record.save(folder), index=write_index(folder), video=path, contact_sheet=sheet, frames=frames, segment_sheets=sheets
    )
