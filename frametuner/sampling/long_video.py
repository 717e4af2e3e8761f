"""Video continuation and long videos, for any family that can continue a video.

A continuation conditions on the LAST ``cond_frames`` frames of a video: they are
VAE-encoded and normalised into the first ``K`` latent frames (K = the latent frames the
VAE makes of ``cond_frames`` pixels frames, ``1 + (cond_frames - 1) // 4`` for a stride-4
VAE), which stay clean and are never stepped; the rest is denoised as usual. The
family's :class:`~frametuner.models.registry.ContinuationInfo` says whether it can, its
default ``cond_frames`` and the sampler options a continuation runs with (e.g. the
condition's KV cache and a high-frequency schedule tail, as the upstream reference's).

A long video is one text/image-to-video segment (or a continuation of ``--video``)
followed by ``segments`` continuation segments of ``num_frames`` each, every one
conditioned on the previous segment's last ``cond_frames`` decoded frames (encoded again,
as upstream's long-video demo does) and stitched without repeating them:
``num_frames + segments * (num_frames - cond_frames)`` frames. Segment ``i`` draws its
noise from ``seed + i``.

Every finished segment's decoded frames are written (atomically) into a segment folder
beside the output, ``<output stem>.segments/``, with a manifest of the settings that
shape the video. A run that stops (killed, out of memory, a full disk) continues from
its last finished segment when started again with the same command and gives the same
video; a different setting is refused, naming it. More ``--segments`` than before extend
a finished run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..storage import disk_errors
from .denoising import denoise
from .pipeline import SampleOutputs, condition_image, encode_prompts, free_memory, initial_noise, load_denoiser
from .video import temporary_beside, write_contact_sheet, write_video

log = logging.getLogger("frametuner.sampling")

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


# ---------------------------------------------------------------------- one continuation
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


def continuation_latents(vae, cond_pixels: torch.Tensor, *, spec, num_frames: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, int]:
    """Seeded noise ``[1, C, T, h, w]`` with the encoded, normalised ``cond_pixels`` in its first
    K latent frames; returns it and K."""
    with torch.no_grad():
        cond = vae.encode(cond_pixels).to(torch.float32).cpu()  # [C, K, h, w]
    k = cond.shape[1]
    latents = initial_noise((1, *spec.geometry.latent_shape(num_frames, height, width)), seed)
    if k >= latents.shape[2]:
        raise ValueError(f"{len(cond_pixels)} conditioning frames fill all {latents.shape[2]} latent frames of a {num_frames}-frame video; use more frames")
    latents[0, :, :k] = cond
    return latents, k


def continue_frames(
    model, vae, cond_pixels: torch.Tensor, *, spec, prompt_embeds, prompt_mask, negative_embeds, negative_mask,
    height: int, width: int, num_frames: int, steps: int, guidance: float, seed: int, device: torch.device,
    shift: float | None = None, distill: bool = False, options: dict | None = None, progress: bool | str = False,
) -> torch.Tensor:
    """One continuation segment: ``cond_pixels`` (uint8 ``[F, H, W, 3]``) encoded, kept clean as
    the first latent frames, the rest denoised; returns all ``num_frames`` decoded frames
    (the first ``F`` re-decoded from the conditioning latents). ``options``: the family's
    sampler options (e.g. ``use_kv_cache``); the global RNG states are left untouched."""
    device = torch.device(device)
    latents, k = continuation_latents(vae, cond_pixels, spec=spec, num_frames=num_frames, height=height, width=width, seed=seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        latents = denoise(
            model, latents.to(device), prompt_embeds, prompt_mask, negative_embeds, negative_mask,
            steps=steps, guidance=guidance, shift=shift, num_cond_latents=k, distill=distill, progress=progress,
            **(options or {}),
        )
    with torch.no_grad():
        return vae.decode(latents[0]).cpu()


# ---------------------------------------------------------------------- the plan
def long_video_frames(num_frames: int, cond_frames: int, segments: int) -> int:
    """Frames of a stitched long video: the first segment whole, then each continuation's new frames."""
    return num_frames + segments * (num_frames - cond_frames)


def continuation_problems(info, *, num_frames: int | None, cond_frames: int, segments: int, flag: str = "--cond_frames") -> list[str]:
    """What is wrong with a continuation / long-video plan for the family ``info`` (a ``FamilyInfo``)."""
    if info.continuation is None:
        return [f"{info.display_name or info.name} cannot continue videos (no clean-frame conditioning); drop --video/--segments"]
    problems = []
    stride = info.frame_stride
    if not info.valid_frames(cond_frames):
        problems.append(f"{flag} {cond_frames}: the VAE packs 1 + {stride}k frames; use {max(1, cond_frames - (cond_frames - 1) % stride)} or {cond_frames - (cond_frames - 1) % stride + stride} (upstream uses {info.continuation.cond_frames})")
    elif num_frames is not None and 1 + (cond_frames - 1) // stride >= 1 + (num_frames - 1) // stride:
        problems.append(f"{flag} {cond_frames}: leaves nothing to generate in a {num_frames}-frame segment; use at most {num_frames - stride} conditioning frames or more --num_frames")
    if segments < 0:
        problems.append(f"--segments {segments}: must be 0 or more")
    return problems


def continuation_options(info, *, distill: bool, turned_off: tuple[str, ...] = (), offloaded_weights: bool = False) -> dict[str, bool]:
    """The sampler options continuation segments run with: the family's defaults, minus those
    turned off (``--no_...`` flags) and those the distilled schedule cannot use, plus those for
    weights kept in host memory (``offloaded_weights``: block swap or group offload)."""
    continuation = info.continuation
    options = dict(continuation.sampler_options) if continuation else {}
    for name in turned_off:
        if name not in options:
            raise ValueError(f"{info.display_name or info.name}'s sampler has no {name!r} option to turn off")
        options[name] = False
    if distill:
        for name in continuation.not_with_distill if continuation else ():
            if options.get(name):
                log.info("%s is off: it does not combine with the distilled schedule", name)
                options[name] = False
    if offloaded_weights:
        for name in continuation.with_offloaded_weights if continuation else ():
            options[name] = True
    return options


# ---------------------------------------------------------------------- the segment folder
def file_digest(path: str | Path | None) -> str | None:
    """sha256 of a file's bytes (what a resumed run must be given again), None for no file."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SegmentFolderMismatch(ValueError):
    """A segment folder holds segments made with other settings."""


def _atomic_write_bytes(path: Path, write) -> None:
    with disk_errors(path.parent, f"writing the segment file {path.name}"):
        temporary = temporary_beside(path)
        try:
            with open(temporary, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


@dataclass
class SegmentFolder:
    """``<output stem>.segments/``: ``manifest.json`` (the settings) and ``segment_NNN.npy``
    (uint8 ``[F, H, W, 3]`` decoded frames of each finished segment)."""

    path: Path
    settings: dict

    @classmethod
    def beside(cls, output: str | Path, settings: dict) -> "SegmentFolder":
        output = Path(output)
        return cls(output.with_name(f"{output.stem}.segments"), settings)

    def open(self) -> int:
        """Create the folder, or check a previous run's settings; returns how many segments are finished."""
        manifest = self.path / MANIFEST
        if manifest.is_file():
            saved = json.loads(manifest.read_text()).get("settings", {})
            differences = [
                f"{key}: {saved.get(key)!r} before, {self.settings.get(key)!r} now"
                for key in sorted(set(saved) | set(self.settings))
                if saved.get(key) != self.settings.get(key)
            ]
            if differences:
                raise SegmentFolderMismatch(
                    f"{self.path} holds segments of a run with other settings ({'; '.join(differences)}); "
                    "run with the same settings to resume it, or remove the folder (or choose another --output) to start over"
                )
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"version": MANIFEST_VERSION, "settings": self.settings}, indent=2, sort_keys=True)
            _atomic_write_bytes(manifest, lambda handle: handle.write(text.encode()))
        return self.finished()

    def segment_path(self, index: int) -> Path:
        return self.path / f"segment_{index:03d}.npy"

    def finished(self) -> int:
        count = 0
        while self.segment_path(count).is_file():
            count += 1
        return count

    def save(self, index: int, frames: torch.Tensor) -> Path:
        path = self.segment_path(index)
        array = np.ascontiguousarray(frames.cpu().numpy() if hasattr(frames, "numpy") else frames, dtype=np.uint8)
        _atomic_write_bytes(path, lambda handle: np.save(handle, array, allow_pickle=False))
        return path

    def load(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.load(self.segment_path(index), allow_pickle=False))


def stitch(segments: list[torch.Tensor], cond_frames: int) -> torch.Tensor:
    """The first segment whole, then each continuation without its (repeated) conditioning frames."""
    return torch.cat([segments[0], *(segment[cond_frames:] for segment in segments[1:])])


# ---------------------------------------------------------------------- the run
def run_settings(request, *, spec, root, dtype, shift, cond_frames: int, config=None) -> dict:
    """What shapes the video (the segment folder refuses to mix runs that differ in any of these).
    ``segments`` is not among them: a finished run may be extended."""
    memory_only = spec.info.continuation.with_offloaded_weights if spec.info.continuation else ()
    settings = dict(
        family=spec.name, model=str(root), dtype=str(dtype).removeprefix("torch."),
        prompt=request.prompt, negative_prompt=request.negative_prompt,
        image=file_digest(request.image), video=file_digest(request.video),
        loras=[[Path(path).name, file_digest(path), float(multiplier)] for path, multiplier in request.loras],
        height=request.height, width=request.width, num_frames=request.num_frames, cond_frames=cond_frames,
        steps=request.steps, guidance=request.guidance, shift=shift, seed=request.seed, distill=request.distill,
        # memory-only options (same video either way) may change between a run and its resume
        sampler_options={name: value for name, value in sorted(request.sampler_options.items()) if name not in memory_only},
    )
    if config is not None:
        settings.update(base_model_precision=config.base_model_precision, attention=config.attention_implementation)
    return settings


def sample_long_video(
    request,
    *,
    spec,
    root,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    attention: str = "auto",
    shift: float | None = None,
    progress: bool = True,
    config=None,
    on_segment=None,
) -> SampleOutputs:
    """A continuation of ``request.video`` and/or a long video of ``1 + request.segments``
    segments (see the module docstring); writes the mp4, its contact sheet and one sheet
    per segment in the segment folder. ``on_segment(index, total, seconds)`` is called
    after each segment this run generates (progress reports, benchmarks)."""
    device = torch.device(device)
    request = request.resolved(spec)  # unset size/length/steps/guidance/fps: the family's
    info = spec.info
    cond_frames = request.cond_frames if request.cond_frames is not None else (info.continuation.cond_frames if info.continuation else 0)
    problems = continuation_problems(info, num_frames=request.num_frames, cond_frames=cond_frames, segments=request.segments)
    if problems:
        raise ValueError("; ".join(problems))
    if config is not None and info.continuation is not None:
        from ..memory.options import offloads_weights

        if offloads_weights(config):  # the weights live in host memory: so do the conditioning frames' caches
            turned_on = {name: True for name in info.continuation.with_offloaded_weights if not request.sampler_options.get(name)}
            if turned_on:
                log.info("%s: on, as the memory options keep weights in host memory", ", ".join(turned_on))
                request = dataclasses.replace(request, sampler_options={**request.sampler_options, **turned_on})
    folder = SegmentFolder.beside(request.output, run_settings(request, spec=spec, root=root, dtype=dtype, shift=shift, cond_frames=cond_frames, config=config))
    total = 1 + request.segments
    done = folder.open()
    if done:
        log.info("resuming %s: %d of %d segments finished", folder.path, min(done, total), total)

    model = vae = None
    text = None
    try:
        for index in range(done, total):
            if text is None:  # the text encoder first, freed before the denoiser loads
                use_cfg = request.guidance > 1.0
                prompts = [request.negative_prompt, request.prompt] if use_cfg else [request.prompt]
                embeds, mask = encode_prompts(spec, root, prompts, device=device, dtype=dtype)
                text = dict(
                    prompt_embeds=embeds[-1:], prompt_mask=mask[-1:],
                    negative_embeds=embeds[:1] if use_cfg else None, negative_mask=mask[:1] if use_cfg else None,
                )
                vae = spec.load_vae(root, device=device, dtype=dtype)
                model = load_denoiser(spec, root, loras=request.loras, device=device, dtype=dtype, attention=attention, config=config)
            started = time.perf_counter()
            seed = request.seed + index
            if index == 0 and request.video is None:
                kind = "image-to-video" if request.image is not None else "text-to-video"
                log.info("segment 1/%d: %s, %d frames", total, kind, request.num_frames)
                latents = initial_noise((1, *spec.geometry.latent_shape(request.num_frames, request.height, request.width)), seed)
                k = 0
                if request.image is not None:
                    with torch.no_grad():
                        cond = vae.encode(condition_image(request.image, request.height, request.width)).to(torch.float32).cpu()
                    k = cond.shape[1]
                    latents[0, :, :k] = cond
                latents = denoise(
                    model, latents.to(device), **text, steps=request.steps, guidance=request.guidance, shift=shift,
                    num_cond_latents=k, distill=request.distill, progress=progress and f"segment 1/{total}",
                )
                with torch.no_grad():
                    frames = vae.decode(latents[0]).cpu()
            else:
                if index == 0:
                    cond_pixels = read_last_frames(request.video, cond_frames, request.height, request.width)
                    source = f"the last {cond_frames} frames of {request.video}"
                else:
                    cond_pixels = folder.load(index - 1)[-cond_frames:]
                    source = f"the last {cond_frames} frames of segment {index}"
                log.info("segment %d/%d: continuing %s", index + 1, total, source)
                frames = continue_frames(
                    model, vae, cond_pixels, spec=spec, **text, height=request.height, width=request.width,
                    num_frames=request.num_frames, steps=request.steps, guidance=request.guidance, seed=seed,
                    device=device, shift=shift, distill=request.distill, options=request.sampler_options,
                    progress=progress and f"segment {index + 1}/{total}",
                )
            folder.save(index, frames)
            write_contact_sheet(frames, folder.path / f"segment_{index:03d}.png", prompt=f"segment {index + 1}/{total}: {request.prompt}")
            seconds = time.perf_counter() - started
            log.info("segment %d/%d done in %.1f s", index + 1, total, seconds)
            if on_segment is not None:
                on_segment(index, total, seconds)
    finally:
        del model, vae
        free_memory(device)

    frames = stitch([folder.load(index) for index in range(total)], cond_frames)
    video = write_video(frames, request.output, fps=request.fps, crf=request.crf)
    sheet = write_contact_sheet(frames, request.contact_sheet_path, prompt=request.prompt)
    return SampleOutputs(video, sheet, frames)
