"""``frametuner sample``: flags, the checks that run before any model loads, and the run.

Every bad input (frame count, resolution, image, LoRA file, LoRA made for another model)
is reported together, each with its fix, before a single weight is read: loading the
real model takes minutes, a typo should not.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from pathlib import Path

from ..config import (
    ConfigError,
    TrainConfig,
    add_config_arguments,
    check_frame_count,
    field_group,
    load_config,
    overrides_from_args,
    parse_resolution,
    resolve_input_path,
    unimplemented_settings,
)
from .lora_check import LoraFileError, describe_misfit, lora_fit_problems, lora_modules, read_lora_header
from .video import DEFAULT_CRF

# torch, diffusers and the pipeline are imported inside the functions that run a sample,
# so that building the CLI parser stays fast.

log = logging.getLogger("frametuner.sampling")

# Config keys that matter to sampling; the rest (data, optimiser, ...) are not flags of `sample`.
SAMPLE_CONFIG_GROUPS = ("model", "memory")
TRAINING_ONLY_KEYS = ("model_type", "gradient_checkpointing", "gradient_checkpointing_cpu_offload")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _with_distill(value, distilled) -> str:
    return f"{value}" if distilled is None else f"{value}; {distilled} with --distill"


def _family_defaults(describe) -> str:
    """A default as each model family has it: ``"the family's: <family>: <value>, ..."``."""
    from ..models.registry import families

    return "the family's: " + ", ".join(f"{name}: {describe(info)}" for name, info in families().items())


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config.json for model/precision/memory options (optional)")
    parser.add_argument("--prompt", required=True, help="what the video shows")
    parser.add_argument("--negative_prompt", default="", help="what to steer away from (default: the empty prompt, as upstream)")
    parser.add_argument("--image", help="first frame for image-to-video (resized and centre-cropped to --resolution)")
    parser.add_argument("--video", help="continue this video: its LAST --cond_frames frames (scaled to cover --resolution, centre-cropped) condition the new clip")
    parser.add_argument("--cond_frames", type=int, default=None, help=f"conditioning frames of a continuation, by the frame rule (default {_family_defaults(lambda i: i.continuation.cond_frames if i.continuation else 'none')})")
    parser.add_argument("--segments", type=int, default=0, help="long video: after the first clip (text/image-to-video, or the --video continuation), this many continuation segments of --num_frames each, stitched; resumable (segment folder beside --output)")
    parser.add_argument("--no_kv_cache", action="store_true", help="continuation: run the conditioning frames through the DiT at every step instead of caching their keys/values once (upstream's use_kv_cache=False; a slightly different video)")
    parser.add_argument("--no_enhance_hf", action="store_true", help="continuation: the plain schedule instead of upstream's enhance_hf tail (50 steps = 50 DiT calls, not 56); off anyway with --distill")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH[:MULTIPLIER]", help="LoRA, repeatable: any file or folder training writes (the PEFT folder lora/peft or its adapter_model.safetensors, lora_upstream.safetensors, lora_comfyui.safetensors) or a PEFT/upstream/ComfyUI file from elsewhere; multiplier default 1.0")
    parser.add_argument("--resolution", default=None, help=f"HEIGHTxWIDTH, multiples of the family's pixel grid (default {_family_defaults(lambda i: i.defaults.resolution)})")
    parser.add_argument("--num_frames", type=int, default=None, help=f"frames, by the family's frame rule (default {_family_defaults(lambda i: f'{i.defaults.frames}, {i.frame_stride}k+1')})")
    parser.add_argument("--steps", type=int, default=None, help=f"denoising steps (default {_family_defaults(lambda i: _with_distill(i.defaults.steps, i.defaults.distill_steps))})")
    parser.add_argument("--guidance", type=float, default=None, help=f"CFG scale, 1 = off (default {_family_defaults(lambda i: _with_distill(i.defaults.guidance, i.defaults.distill_guidance))})")
    parser.add_argument("--seed", type=int, default=42, help="noise seed (same seed, same video on any device)")
    parser.add_argument("--fps", type=int, default=None, help=f"frame rate written into the mp4 (default {_family_defaults(lambda i: i.defaults.fps)})")
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF, help=f"H.264 quality, lower is better (default {DEFAULT_CRF})")
    parser.add_argument("--distill", action="store_true", help="the family's distilled schedule (pass its distillation LoRA with --lora or --distill_lora)")
    parser.add_argument("--distill_lora", default=None, metavar="PATH", help="the family's distillation LoRA (any LoRA format), stacked on the --lora ones, with the family's distilled schedule (= --lora PATH --distill)")
    parser.add_argument("--output", default="out.mp4", help="the mp4 to write; a contact sheet goes beside it as .png")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), or a torch device")
    exclude = tuple(key for key in TrainConfig.model_fields if field_group(key) not in SAMPLE_CONFIG_GROUPS or key in TRAINING_ONLY_KEYS)
    add_config_arguments(parser, exclude=exclude)


def parse_lora_argument(text: str) -> tuple[Path, float]:
    """``PATH[:MULTIPLIER]``; a colon that belongs to the path (``C:\\loras\\x``) stays in it."""
    head, colon, tail = text.rpartition(":")
    if not (colon and head and tail) or any(sep in tail for sep in "/\\"):
        return Path(text), 1.0
    try:
        return Path(head), float(tail)
    except ValueError:
        if Path(text).exists():
            return Path(text), 1.0
        raise ValueError(f"--lora {text}: multiplier {tail!r} is not a number; write PATH:0.8") from None


def _check(problems: list[str], flag: str, check, value):
    try:
        return check(value)
    except (ValueError, OSError) as error:
        problems.append(f"{flag} {value}: {error}")
        return None


def build_request(args: argparse.Namespace, spec):
    """The validated ``SampleRequest``; raises ``ConfigError`` listing every bad flag with its fix."""
    from ..models.family import DenoiseSettings
    from .pipeline import SampleRequest

    problems: list[str] = []
    defaults = spec.defaults
    resolution = args.resolution if args.resolution is not None else defaults.resolution
    size = _check(problems, "--resolution", lambda text: parse_resolution(text, spec.name), resolution)
    num_frames = args.num_frames if args.num_frames is not None else defaults.frames
    frames = _check(problems, "--num_frames", lambda value: check_frame_count(value, spec.name), num_frames)
    # --distill_lora: upstream's distillation LoRA, sampled with the family's distilled schedule.
    distill = bool(args.distill or getattr(args, "distill_lora", None))
    settings = DenoiseSettings(steps=args.steps, guidance=args.guidance, distill=distill).resolved(spec.defaults)
    steps, guidance = settings.steps, settings.guidance
    if steps < 1:
        problems.append(f"--steps {steps}: must be at least 1")
    else:
        problems.extend(f"--steps {steps}: {problem}" for problem in spec.sampling_problems(settings))
    if guidance < 0:
        problems.append(f"--guidance {guidance}: must be >= 0 (1.0 turns guidance off)")
    fps = args.fps if args.fps is not None else spec.defaults.fps
    if fps < 1:
        problems.append(f"--fps {fps}: must be a positive frame rate, e.g. {spec.defaults.fps}")
    if not 0 <= args.crf <= 51:
        problems.append(f"--crf {args.crf}: H.264 quality must be in 0..51 (lower = better; 18 is visually lossless)")
    output = Path(args.output)
    if output.suffix.lower() != ".mp4":
        problems.append(f"--output {output}: videos are written as H.264 mp4; end the name in .mp4")
    image = None
    if args.image:
        image = Path(args.image)
        problems.extend(_image_problems(image))
        if frames is not None and frames < 1 + spec.info.frame_stride:
            problems.append(f"--num_frames {frames}: image-to-video keeps the first latent frame fixed; use at least {1 + spec.info.frame_stride} frames")
    loras = []
    for text in args.lora:
        try:
            path, multiplier = parse_lora_argument(text)
            lora_modules(read_lora_header(path), path)  # readable and holds LoRA weights
            loras.append((path, multiplier))
        except (ValueError, LoraFileError) as error:
            problems.append(f"--lora {error}" if not str(error).startswith("--lora") else str(error))
    if getattr(args, "distill_lora", None):
        if defaults.distill_steps is None:
            problems.append(f"--distill_lora {args.distill_lora}: {spec.info.display_name or spec.name} has no distilled sampling mode; drop it")
        else:
            try:
                path = Path(args.distill_lora)
                lora_modules(read_lora_header(path), path)
                loras.append((path, 1.0))
            except (ValueError, LoraFileError) as error:
                problems.append(f"--distill_lora {error}")
    video = Path(args.video) if args.video else None
    cond_frames, sampler_options = None, {}
    if video is not None or args.segments:
        cond_frames, sampler_options = _continuation_settings(args, spec, frames, video, problems)
    if problems:
        raise ConfigError(problems)
    if distill and not loras:
        log.warning("--distill without --lora: the distilled schedule is made for the family's distilled LoRA (see its README entry); pass it with --lora")
    return SampleRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, image=image, loras=loras,
        height=size[0], width=size[1], num_frames=frames, steps=steps, guidance=guidance,
        seed=args.seed, fps=fps, crf=args.crf, distill=distill, output=output,
        video=video, cond_frames=cond_frames, segments=args.segments, sampler_options=sampler_options,
    )


# Sampler options a continuation flag turns off (the family says which it has and their defaults).
_CONTINUATION_SWITCHES = {"no_kv_cache": "use_kv_cache", "no_enhance_hf": "enhance_hf"}


def _continuation_settings(args, spec, frames, video: Path | None, problems: list[str]) -> tuple[int | None, dict]:
    """``--video``/``--segments``/``--cond_frames`` checked against the family; (cond_frames, sampler options)."""
    from .long_video import continuation_options, continuation_problems

    info = spec.info
    if video is not None and args.image:
        problems.append("--image and --video: a clip starts from an image or continues a video, not both; drop one")
    if info.continuation is None:
        problems.extend(continuation_problems(info, num_frames=frames, cond_frames=0, segments=args.segments))
        return None, {}
    cond_frames = args.cond_frames if args.cond_frames is not None else info.continuation.cond_frames
    problems.extend(continuation_problems(info, num_frames=frames, cond_frames=cond_frames, segments=args.segments))
    if video is not None:
        problems.extend(_video_problems(video, cond_frames, info.frame_stride))
    turned_off = tuple(option for flag, option in _CONTINUATION_SWITCHES.items() if getattr(args, flag, False))
    try:
        options = continuation_options(info, distill=bool(args.distill or getattr(args, "distill_lora", None)), turned_off=turned_off)
    except ValueError as error:
        problems.append(str(error))
        options = {}
    return cond_frames, options


def _video_problems(path: Path, cond_frames: int, stride: int) -> list[str]:
    if not path.is_file():
        return [f"--video {path}: file not found; give the video to continue (mp4, mov, webm, ...)"]
    from ..data.media import DecodeError, probe_video

    try:
        frames = probe_video(path).info.frames
    except DecodeError as error:
        return [f"--video {path}: cannot be read as a video ({error})"]
    if frames < cond_frames:
        return [f"--video {path}: {frames} frames, fewer than the {cond_frames} conditioning frames; use a longer video or --cond_frames {max(1, frames - (frames - 1) % stride) if frames else 1}"]
    return []


def _image_problems(path: Path) -> list[str]:
    if not path.is_file():
        return [f"--image {path}: file not found; give the first frame as a PNG/JPEG/WebP file"]
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError) as error:
        return [f"--image {path}: cannot be read as an image ({error}); use a PNG, JPEG or WebP file"]
    return []


def model_root(config: TrainConfig, spec) -> str | Path:
    """The checkpoint folder or hub id; a local folder must hold the DiT's config."""
    value = config.pretrained_model_name_or_path
    if value:
        local = resolve_input_path(config, value)
        if local.exists() or not _HUB_ID.match(value):
            transformer_config = local / spec.subfolders["transformer"] / "config.json"
            if not transformer_config.is_file():
                raise ConfigError([
                    f"--pretrained_model_name_or_path {value}: {transformer_config} not found; point it at a folder in the "
                    f"upstream layout ({', '.join(f'{name}/' for name in spec.subfolders.values())}) or a hub id"
                ])
            return local
    return spec.checkpoint_root(config.model_flavour, value)


def skeleton_transformer(spec, root):
    """The DiT of ``root``'s config on the meta device: its layers and shapes, no memory, no weights."""
    import torch

    transformer_class = spec.transformer_class
    model_config = transformer_class.load_config(root, subfolder=spec.subfolders["transformer"])
    with torch.device("meta"):
        return transformer_class.from_config(model_config)


def check_loras_fit(request, spec, root) -> None:
    if not request.loras:
        return
    model = skeleton_transformer(spec, root)
    config = model.config  # diffusers' config keys: hidden_size, or heads x head dim
    hidden = config.get("hidden_size") or config.get("num_attention_heads", 0) * config.get("attention_head_dim", 0)
    label = f"{spec.name} at {root} (hidden size {hidden}, {len(model.blocks)} blocks)"
    problems = []
    for path, _ in request.loras:
        misfits = lora_fit_problems(path, model)
        if misfits:
            problems.append(f"--lora {describe_misfit(path, misfits, label)}")
    if problems:
        raise ConfigError(problems)


def pick_device(name: str):
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def sampling_dtype(config: TrainConfig):
    """Explicit base precision (bf16/fp16/fp32) wins; otherwise the compute precision."""
    from ..config.precision import base_weight_dtype

    return base_weight_dtype(config)


def run_sample(args: argparse.Namespace) -> int:
    from ..models.registry import load_spec
    from .pipeline import sample_video

    config = load_config(args.config, overrides_from_args(args))
    for line in unimplemented_settings(config):
        log.warning("WARNING: %s", line)
    spec = load_spec(config.model_family)
    request = build_request(args, spec)
    root = model_root(config, spec)
    check_loras_fit(request, spec, root)

    device, dtype = pick_device(args.device), sampling_dtype(config)
    if config.fp8_compute:  # before any weight is read
        from ..memory.errors import MemoryOptionError
        from ..memory.fp8 import check_fp8_compute_supported

        try:
            check_fp8_compute_supported(device)
        except MemoryOptionError as error:
            raise ConfigError([f"--fp8_compute: {error}"]) from None
    kind = "video continuation" if request.video else ("image-to-video" if request.image else "text-to-video")
    if request.segments:
        from .long_video import long_video_frames

        kind += f" + {request.segments} continuation segment(s) of {request.cond_frames} conditioning frames: {long_video_frames(request.num_frames, request.cond_frames, request.segments)} frames"
    log.info("%s %dx%d, %d frames, %d steps, guidance %g, seed %d on %s (%s)", kind, request.height, request.width, request.num_frames, request.steps, request.guidance, request.seed, device, str(dtype).removeprefix("torch."))
    started = time.perf_counter()
    outputs = sample_video(request, spec=spec, root=root, device=device, dtype=dtype, attention=config.attention_implementation, shift=config.flow_schedule_shift, config=config)
    log.info("done in %.1f s", time.perf_counter() - started)
    print(f"video: {outputs.video}")
    print(f"contact sheet: {outputs.contact_sheet}")
    return 0


# ---------------------------------------------------------------------- frametuner decode
DECODE_CONFIG_GROUPS = ("model", "logging")


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the training config (for output_dir and the model)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), or a torch device")
    exclude = tuple(key for key in TrainConfig.model_fields if field_group(key) not in DECODE_CONFIG_GROUPS or key in TRAINING_ONLY_KEYS)
    add_config_arguments(parser, exclude=exclude)


def run_decode(args: argparse.Namespace) -> int:
    """Turn validation latents saved without a VAE (memory was short while training) into videos."""
    from ..models.registry import load_spec
    from .gallery import load_records
    from .pipeline import VALIDATION_DIR_NAME, decode_pending_validations

    config = load_config(args.config, overrides_from_args(args))
    folder = Path(config.output_dir) / VALIDATION_DIR_NAME
    pending = [record for record in load_records(folder) if record.latents and not record.video]
    if not pending:
        print(f"nothing to decode in {folder}")
        return 0
    spec = load_spec(config.model_family)
    root = model_root(config, spec)
    vae = spec.load_vae(root, device=pick_device(args.device), dtype=sampling_dtype(config))
    for outputs in decode_pending_validations(folder, vae):
        print(f"video: {outputs.video}")
    print(f"index: {folder / 'index.html'}")
    return 0
