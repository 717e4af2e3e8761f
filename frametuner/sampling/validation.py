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

from .denoising import denoise
from .gallery import ValidationRecord, write_index
from .pipeline import ValidationOutputs, initial_noise
from .video import DEFAULT_CRF, write_contact_sheet, write_video


def read_last_frames(path: str | Path, count: int, height: int, width: int) -> torch.Tensor:
    """The last ``count`` frames of a video, scaled to cover ``height`` x ``width`` and
    center-cropped: uint8 ``[count, height, width, 3]`` (what a continuation conditions on)."""
    from ..data.buckets import crop_box
    from ..data.media import decode_frames, probe_video
    from ..data.sample import Bucket

    probe = probe_video(path)
    frames = probe.info.frames
    if frames < count:
        raise ValueError(f"{path}: {frames} frames, fewer than the {count} conditioning frames a continuation needs")
    crop = crop_box(probe.info.height, probe.info.width, Bucket(height, width, count), "center")
    pixels = decode_frames(probe.info, list(range(frames - count, frames)), crop, pts=probe.pts)
    return torch.from_numpy(pixels)


def continue_frames(
    model, vae, cond_pixels: torch.Tensor, *, spec, prompt_embeds, prompt_mask, negative_embeds, negative_mask,
    height: int, width: int, num_frames: int, steps: int, guidance: float, seed: int, device: torch.device,
) -> torch.Tensor:
    """One continuation segment: ``cond_pixels`` (uint8 ``[F, H, W, 3]``) encoded, kept clean as
    the first latent frames, the rest denoised; returns all ``num_frames`` decoded frames
    (the first ``F`` re-decoded from the conditioning latents)."""
    cond = vae.encode(cond_pixels).to(torch.float32)
    k = cond.shape[1]
    latents = initial_noise((1, *spec.geometry.latent_shape(num_frames, height, width)), seed)
    latents[0, :, :k] = cond.cpu()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        latents = denoise(
            model, latents.to(device), prompt_embeds, prompt_mask, negative_embeds, negative_mask,
            steps=steps, guidance=guidance, num_cond_latents=k,
        )
    with torch.no_grad():
        return vae.decode(latents[0]).cpu()


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
