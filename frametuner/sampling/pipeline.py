"""Text/image-to-video from prompts, and the validation renders the trainer asks for.

Components come from the model family's spec (``load_text_encoder``, ``load_vae``,
``load_transformer``) and are held only while needed: the 5.7B text encoder is freed
before the 13.6B DiT is loaded, and the DiT is freed before the VAE decodes.
Noise is drawn on the CPU in float32 from a seeded generator, so a seed gives the same
starting point on every device.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..models.family import TextConditioning
from .denoising import denoise
from .gallery import ValidationRecord, write_index
from .video import DEFAULT_CRF, temporary_beside, write_contact_sheet, write_video

log = logging.getLogger("frametuner.sampling")

VALIDATION_DIR_NAME = "validation"


def _with_family_defaults(settings, spec):
    """A copy of a :class:`VideoSettings` or :class:`SampleRequest` with every unset size,
    length, steps, guidance and fps taken from the family (the distilled steps/guidance with
    ``distill``)."""
    from dataclasses import replace

    from ..models.family import DenoiseSettings

    d = spec.defaults
    denoise = DenoiseSettings(steps=settings.steps, guidance=settings.guidance, distill=settings.distill).resolved(d)
    return replace(
        settings,
        height=d.height if settings.height is None else settings.height,
        width=d.width if settings.width is None else settings.width,
        num_frames=d.frames if settings.num_frames is None else settings.num_frames,
        steps=denoise.steps,
        guidance=denoise.guidance,
        fps=d.fps if settings.fps is None else settings.fps,
    )


@dataclass(frozen=True)
class VideoSettings:
    """How one video is sampled and written (the validation plumbing's one settings object).

    None: the model family's default (:meth:`resolved`).
    """

    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 42
    fps: int | None = None
    crf: int = DEFAULT_CRF
    distill: bool = False

    def resolved(self, spec) -> "VideoSettings":
        return _with_family_defaults(self, spec)

    def record(self) -> dict:
        """The settings a validation record stores."""
        from dataclasses import asdict

        return asdict(self)


@dataclass
class SampleRequest:
    """One video to generate; size, length, steps, guidance and fps left None are the model
    family's defaults (:meth:`resolved`)."""

    prompt: str
    negative_prompt: str = ""  # upstream's CFG uses "" when no negative prompt is given
    image: Path | None = None  # image-to-video: the first frame
    loras: list[tuple[Path, float]] = field(default_factory=list)
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 42
    fps: int | None = None
    crf: int = DEFAULT_CRF
    distill: bool = False
    output: Path = Path("out.mp4")
    # Video continuation / long videos (sampling.long_video): continue the last ``cond_frames``
    # frames of ``video`` (None: the family's default count), then ``segments`` more segments.
    video: Path | None = None
    cond_frames: int | None = None
    segments: int = 0
    sampler_options: dict = field(default_factory=dict)  # denoise() options of continuation segments

    @property
    def contact_sheet_path(self) -> Path:
        return Path(self.output).with_suffix(".png")

    def resolved(self, spec) -> "SampleRequest":
        """A copy with every unset setting taken from the family (``spec.defaults``; the
        distilled steps/guidance with ``distill``)."""
        return _with_family_defaults(self, spec)


@dataclass
class SampleOutputs:
    video: Path
    contact_sheet: Path
    frames: torch.Tensor  # uint8 [F, H, W, 3]


def initial_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Gaussian latents from a seeded CPU generator in float32: identical on every device."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def condition_image(image, height: int, width: int) -> torch.Tensor:
    """The i2v first frame: resized to cover ``height x width``, centre-cropped, as uint8 ``[1, H, W, 3]``."""
    from PIL import Image, ImageOps

    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    fitted = ImageOps.fit(image.convert("RGB"), (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    return torch.from_numpy(np.array(fitted, dtype=np.uint8)).unsqueeze(0)


def free_memory(device: torch.device) -> None:
    """Hand freed accelerator memory back before the next large component loads.

    ``gc.collect`` catches modules kept alive by reference cycles (hooks); on the CPU the
    allocator returns memory on its own and the collection would only cost time.
    """
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    elif device.type == "mps":
        gc.collect()
        torch.mps.empty_cache()


def encode_prompts(spec, root, prompts: list[str], *, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``[B, L, C]`` and masks ``[B, L]`` of ``prompts``; the encoder is freed afterwards."""
    if not hasattr(spec, "load_text_encoder"):
        raise RuntimeError(f"the {spec.name} family has no load_text_encoder(); this build cannot encode prompts")
    encoder = spec.load_text_encoder(root, device=device, dtype=dtype)
    try:
        with torch.no_grad():
            embeds, mask = encoder.encode(list(prompts))
    finally:
        del encoder
        free_memory(torch.device(device))
    return embeds, mask


def apply_loras(model, loras) -> None:
    """Activate each ``(path, multiplier)`` on the DiT; they stack like upstream's enabled LoRAs."""
    if not loras:
        return
    from ..lora import apply_lora  # the LoRA room's loader (upstream and PEFT formats)

    for path, multiplier in loras:
        log.info("LoRA %s x %g", path, multiplier)
        apply_lora(model, path, multiplier)


def load_denoiser(spec, root, *, loras=(), device: torch.device, dtype: torch.dtype, attention: str = "auto", config=None):
    """The family's denoiser in eval mode with ``loras`` applied and, given a ``TrainConfig``,
    its attention settings and memory options (quantised base, group offload, block swap)."""
    if config is None:
        model = spec.load_transformer(root, dtype=dtype, device=device)
    else:  # quantised base / block swap / group offload of the config
        from ..memory import load_transformer

        model = load_transformer(spec, root, config, device=device, dtype=dtype, training=False)
    model.eval()
    if config is not None:  # attention_implementation + bsa_* keys of a TrainConfig
        spec.configure_attention(model, config)
    elif hasattr(model, "set_attention_implementation"):
        model.set_attention_implementation(attention)
    if config is not None and getattr(config, "fp8_compute", False):  # before LoRAs: it swaps the base Linears
        from ..memory.fp8 import enable_configured_fp8_compute

        model.requires_grad_(False)  # sampling: every weight is frozen
        enable_configured_fp8_compute(model, device, config, spec)
    apply_loras(model, loras)  # on the quantised layers; before offload places them
    if config is not None:
        from ..memory import apply_memory_options

        if not apply_memory_options(model, config, device, training=False).places_model:
            model.to(device)
    return model


def generate(
    request: SampleRequest,
    *,
    spec,
    root,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    attention: str = "auto",
    shift: float | None = None,
    progress: bool = True,
    config=None,
) -> torch.Tensor:
    """Run text/image-to-video for ``request``; returns decoded frames uint8 ``[F, H, W, 3]``.

    ``attention`` picks the DiT's self-attention kernel (``auto``, ``sdpa``, ``xformers``, ``bsa``);
    ``shift`` defaults to the family's. ``config`` (a ``TrainConfig``,
    optional): its attention settings and its memory settings (quantised base, group offload,
    block swap) apply to the DiT.
    """
    device = torch.device(device)
    request = request.resolved(spec)
    use_cfg = request.guidance > 1.0
    prompts = [request.negative_prompt, request.prompt] if use_cfg else [request.prompt]
    embeds, mask = encode_prompts(spec, root, prompts, device=device, dtype=dtype)
    negative_embeds, negative_mask = (embeds[:1], mask[:1]) if use_cfg else (None, None)
    prompt_embeds, prompt_mask = embeds[-1:], mask[-1:]

    latents = initial_noise((1, *spec.geometry.latent_shape(request.num_frames, request.height, request.width)), request.seed)
    vae = None  # text-to-video loads it only after the DiT is gone
    num_cond_latents, conditioning = 0, {}
    if request.image is not None:
        vae = spec.load_vae(root, device=device, dtype=dtype)
        image = condition_image(request.image, request.height, request.width)
        num_cond_latents, conditioning = spec.image_conditioning(root, vae, image, latents, frames=request.num_frames, device=device, dtype=dtype)

    model = load_denoiser(spec, root, loras=request.loras, device=device, dtype=dtype, attention=attention, config=config)
    latents = denoise(
        model,
        latents.to(device),
        prompt_embeds,
        prompt_mask,
        negative_embeds,
        negative_mask,
        steps=request.steps,
        guidance=request.guidance,
        shift=shift,
        num_cond_latents=num_cond_latents,
        distill=request.distill,
        progress=progress,
        conditioning=conditioning or None,
    )
    del model
    free_memory(device)
    if vae is None:
        vae = spec.load_vae(root, device=device, dtype=dtype)
    with torch.no_grad():
        frames = vae.decode(latents[0])
    del vae
    free_memory(device)
    return frames.cpu()


def sample_video(request: SampleRequest, *, spec, root, progress: bool = True, **options) -> SampleOutputs:
    """:func:`generate` (``options``: device, dtype, attention, shift), then the mp4 and its contact sheet (``<output>.png``).
    A continuation (``request.video``) or long video (``request.segments``) goes to :mod:`.long_video`."""
    request = request.resolved(spec)
    if request.video is not None or request.segments:
        from .long_video import sample_long_video

        return sample_long_video(request, spec=spec, root=root, progress=progress, **options)
    frames = generate(request, spec=spec, root=root, progress=progress, **options)
    video = write_video(frames, request.output, fps=request.fps, crf=request.crf)
    sheet = write_contact_sheet(frames, request.contact_sheet_path, prompt=request.prompt)
    return SampleOutputs(video, sheet, frames)


# ---------------------------------------------------------------------- validation
@dataclass
class ValidationOutputs:
    record: Path  # the JSON record index.html is built from
    index: Path
    video: Path | None = None
    contact_sheet: Path | None = None
    latents: Path | None = None  # set when decoding was deferred (no VAE given)
    frames: torch.Tensor | None = None  # uint8 [F, H, W, 3], for TensorBoard
    segment_sheets: list[Path] = field(default_factory=list)  # long videos: a contact sheet per segment


def _write_outputs(folder: Path, record: ValidationRecord, frames: torch.Tensor, fps: int, crf: int) -> ValidationOutputs:
    stem = record.stem
    video = write_video(frames, folder / f"{stem}.mp4", fps=fps, crf=crf)
    sheet = write_contact_sheet(frames, folder / f"{stem}.png", prompt=record.prompt, step=record.step)
    record.video, record.contact_sheet = video.name, sheet.name
    return ValidationOutputs(record=record.save(folder), index=write_index(folder), video=video, contact_sheet=sheet, frames=frames)


def render_validation(
    model,
    vae,
    *,
    spec,
    validation_dir: str | Path,
    step: int,
    prompt_index: int,
    prompt: str,
    text: TextConditioning,
    video: VideoSettings = VideoSettings(),
    cond_latents: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    write: bool = True,
    kind: str = "prompt",
    sampler_options: dict | None = None,
    conditioning: dict[str, torch.Tensor] | None = None,
) -> ValidationOutputs | None:
    """One validation video from an already loaded DiT and cached prompt embeddings
    (``text``: the prompt's and, for guidance > 1, the negative prompt's), sampled as
    ``video`` says (its unset values: the family's defaults).

    Writes ``<validation_dir>/step{step:06d}_prompt{i:02d}.mp4`` + ``.png`` + ``.json`` and
    rebuilds ``index.html``. ``cond_latents`` (normalised ``[C, k, h, w]``) makes it
    image-to-video (``k`` = 1) or a continuation (``kind="continuation"``, ``k`` = its
    conditioning latent frames; ``sampler_options``: the family's continuation options, e.g.
    ``use_kv_cache``). ``conditioning``: the family's sampler inputs for an image the denoiser
    reads another way (``denoise(conditioning=...)``, batched ``[1, ...]``; e.g. an eval clip's
    cached training conditioning), which makes it image-to-video too. ``device`` (default: where the model's first parameter is) holds the
    latents. With ``vae=None`` the final latents are saved instead and
    :func:`decode_pending_validations` turns them into videos later (no VAE in memory
    during training). The model is put in eval mode and restored; the global RNG
    states are untouched, so training continues exactly as without validation.
    ``write=False`` only runs the denoising forwards and returns None: the other ranks of
    an FSDP-sharded model, whose every forward needs all ranks, while rank 0 writes.
    """
    folder = Path(validation_dir)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    video = video.resolved(spec)
    latents = initial_noise((1, *spec.geometry.latent_shape(video.num_frames, video.height, video.width)), video.seed)
    num_cond_latents = 0
    if cond_latents is not None:
        cond = cond_latents.reshape(-1, *cond_latents.shape[-4:])[0]
        num_cond_latents = cond.shape[1]
        latents[0, :, :num_cond_latents] = cond.to(latents)

    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            latents = denoise(
                model, latents.to(device), text.prompt_embeds, text.prompt_mask, text.negative_embeds, text.negative_mask,
                steps=video.steps, guidance=video.guidance, num_cond_latents=num_cond_latents,
                distill=video.distill, progress=progress, conditioning=conditioning, **(sampler_options or {}),
            )
    finally:
        model.train(was_training)
    if not write:
        return None

    settings = dict(video.record(), image_to_video=num_cond_latents > 0 or bool(conditioning))
    if kind == "continuation":
        settings.update(image_to_video=False, cond_latent_frames=num_cond_latents, sampler_options=dict(sampler_options or {}))
    record = ValidationRecord(step, prompt_index, prompt, settings=settings, kind=kind)
    if vae is None:
        from safetensors.torch import save_file

        path = folder / f"{record.stem}.latents.safetensors"
        folder.mkdir(parents=True, exist_ok=True)
        temporary = temporary_beside(path)
        save_file({"latents": latents[0].cpu().contiguous()}, str(temporary))
        temporary.replace(path)
        record.latents = path.name
        return ValidationOutputs(record=record.save(folder), index=write_index(folder), latents=path)
    with torch.no_grad():
        frames = vae.decode(latents[0]).cpu()
    return _write_outputs(folder, record, frames, video.fps, video.crf)


def decode_pending_validations(validation_dir: str | Path, vae) -> list[ValidationOutputs]:
    """Decode validations whose latents were saved without a VAE; writes their mp4 + PNG."""
    from safetensors.torch import load_file

    from .gallery import load_records

    folder = Path(validation_dir)
    done = []
    for record in load_records(folder):
        if not record.latents or record.video:
            continue
        latents_path = folder / record.latents
        with torch.no_grad():
            frames = vae.decode(load_file(str(latents_path))["latents"]).cpu()
        record.latents = None
        fps, crf = record.settings["fps"], record.settings.get("crf", DEFAULT_CRF)  # every record stores its fps
        done.append(_write_outputs(folder, record, frames, fps, crf))
        latents_path.unlink(missing_ok=True)
    return done
