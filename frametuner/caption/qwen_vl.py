"""Qwen2.5-VL captioning through transformers, as its model card does it, without torchvision.

The model card's video usage (https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct, "Video
inference" and "Process Videos"; docs/captioning.md quotes it): one user message holding
``{"type": "video", ...}`` and ``{"type": "text", "text": instruction}``,
``processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``,
``processor(text=..., images=..., videos=..., padding=True, return_tensors="pt", **video_kwargs)``
(``video_kwargs``: the sampled frame rate), ``model.generate(**inputs, max_new_tokens=...)``,
the prompt cut off the output and ``processor.batch_decode(..., skip_special_tokens=True)``;
batches pad on the left.

All of that runs through ``Qwen2_5_VLProcessor`` itself (its chat template, its placeholder
expansion, ``second_per_grid_ts``, ``mm_token_type_ids``), with one part swapped:
transformers' video processors need torchvision, which frametuner does not depend on, so
:class:`FramesVideoProcessor` does the Qwen2-VL video processor's work on frames PyAV
already decoded at the processor's size (``frames.py``): rescale to [0, 1], normalise with
the checkpoint's mean/std, pad the frame count to the temporal patch, patchify. Images go
through transformers' own (Pillow) Qwen2-VL image processor. Pixel budgets follow
qwen-vl-utils (the card's helper): video frames 128..768 x 28^2 pixels, and at most
``128000 x 28^2 x 0.9`` pixels over a whole clip; a checkpoint's
``video_preprocessor_config.json`` overrides them.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import DEFAULT_MODEL, QUANTISATIONS  # noqa: F401 - DEFAULT_MODEL re-exported
from .frames import Media

log = logging.getLogger("frametuner.caption")

COMPATIBLE_MODEL_TYPES = ("qwen2_5_vl",)

VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)
IMAGE_MIN_PIXELS = 4 * 28 * 28
IMAGE_MAX_PIXELS = 16384 * 28 * 28
DEFAULT_FRAMES = 16
DEFAULT_MAX_NEW_TOKENS = 512
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CaptionModelError(RuntimeError):
    """A model that cannot caption here (wrong architecture, missing files): one clear line."""


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's frame size: both sides multiples of ``factor``, the area within
    [``min_pixels``, ``max_pixels``], the aspect ratio kept as closely as that allows."""
    if max(height, width) > 200 * min(height, width):
        raise ValueError(f"aspect ratio above 200 ({width}x{height})")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    return h, w


@dataclass(frozen=True)
class VisionSettings:
    """Patch geometry, normalisation and pixel budgets of one checkpoint."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    video_min_pixels: int = VIDEO_MIN_PIXELS
    video_max_pixels: int = VIDEO_MAX_PIXELS
    video_total_pixels: int = VIDEO_TOTAL_PIXELS
    image_min_pixels: int = IMAGE_MIN_PIXELS
    image_max_pixels: int = IMAGE_MAX_PIXELS
    frames: int = DEFAULT_FRAMES

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def video_size(self, height: int, width: int, frames: int) -> tuple[int, int]:
        """A clip's frame size: per-frame budget, lowered so the clip fits the total budget
        (qwen-vl-utils: frames count in pairs, never below 1.05 x the minimum)."""
        share = self.video_total_pixels / max(frames, 1) * self.temporal_patch_size
        max_pixels = max(min(self.video_max_pixels, share), int(self.video_min_pixels * 1.05))
        return smart_resize(height, width, self.factor, self.video_min_pixels, int(max_pixels))

    def image_size(self, height: int, width: int, frames: int = 1) -> tuple[int, int]:
        return smart_resize(height, width, self.factor, self.image_min_pixels, self.image_max_pixels)

    @classmethod
    def from_configs(cls, preprocessor: dict | None, video: dict | None) -> "VisionSettings":
        """From ``preprocessor_config.json`` (patches, mean/std, image budget) and
        ``video_preprocessor_config.json`` (video budget, ``num_frames``), either may be absent."""
        preprocessor, video = preprocessor or {}, video or {}
        values: dict = {}
        for key in ("patch_size", "merge_size", "temporal_patch_size"):
            source = video.get(key, preprocessor.get(key))
            if source is not None:
                values[key] = int(source)
        for key in ("image_mean", "image_std"):
            if preprocessor.get(key) is not None:
                values[key] = tuple(float(v) for v in preprocessor[key])
        size = preprocessor.get("size") or {}
        image_min = preprocessor.get("min_pixels", size.get("shortest_edge"))
        image_max = preprocessor.get("max_pixels", size.get("longest_edge"))
        if image_min is not None:
            values["image_min_pixels"] = int(image_min)
        if image_max is not None:
            values["image_max_pixels"] = int(image_max)
        size = video.get("size") or {}
        video_min = video.get("min_pixels", size.get("shortest_edge"))
        video_max = video.get("max_pixels", size.get("longest_edge"))
        if video_min is not None:
            values["video_min_pixels"] = int(video_min)
        if video_max is not None:
            values["video_max_pixels"] = int(video_max)
        if video.get("num_frames"):
            values["frames"] = int(video["num_frames"])
        return cls(**values)


def patchify(frames: np.ndarray, settings: VisionSettings) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 ``[F, H, W, 3]`` frames -> Qwen2-VL patches ``[t*h*w, 3*tp*p*p]`` and the grid (t, h, w).

    Rescaled to [0, 1] and normalised in float32; the frame count is padded to the temporal
    patch by repeating the last frame; patches are ordered by merge window (the layout the
    vision tower's patch merger expects, as transformers' Qwen2-VL processors lay it out).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    p, m, tp = settings.patch_size, settings.merge_size, settings.temporal_patch_size
    count, height, width, _ = frames.shape
    if height % (p * m) or width % (p * m):
        raise ValueError(f"frame size {height}x{width} is not a multiple of {p * m}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(settings.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(settings.image_std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (x - mean) / std
    if count % tp:
        x = torch.cat([x, x[-1:].expand(tp - count % tp, -1, -1, -1)])
    grid_t, grid_h, grid_w = x.shape[0] // tp, height // p, width // p
    x = x.view(grid_t, tp, 3, grid_h // m, m, p, grid_w // m, m, p)
    # -> (t, h/m, w/m, m_h, m_w, channel, tp, p_h, p_w)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(grid_t * grid_h * grid_w, 3 * tp * p * p), (grid_t, grid_h, grid_w)


def _video_processor_class():
    """:class:`FramesVideoProcessor`, defined on first use (importing transformers is slow)."""
    global FramesVideoProcessor
    if "FramesVideoProcessor" in globals():
        return FramesVideoProcessor
    from transformers.feature_extraction_utils import BatchFeature
    from transformers.video_processing_utils import VideoProcessorMixin
    from transformers.video_utils import VideoMetadata

    class FramesVideoProcessor(VideoProcessorMixin):
        """Qwen2-VL's video processor for frames already decoded at its size (no torchvision)."""

        model_input_names = ["pixel_values_videos", "video_grid_thw"]

        def __init__(self, settings: VisionSettings):
            super().__init__()
            self.settings = settings
            self.patch_size = settings.patch_size
            self.merge_size = settings.merge_size
            self.temporal_patch_size = settings.temporal_patch_size

        def __call__(self, videos, video_metadata=None, return_tensors=None, return_metadata=False, **kwargs):
            videos = list(videos) if isinstance(videos, (list, tuple)) else [videos]
            patches, grids = [], []
            for video in videos:
                flat, grid = patchify(np.asarray(video), self.settings)
                patches.append(flat)
                grids.append(grid)
            metadata = list(video_metadata) if video_metadata is not None else [None] * len(videos)
            metadata = [m if isinstance(m, VideoMetadata) else VideoMetadata(**m) if m else VideoMetadata(total_num_frames=len(v), fps=2.0)
                        for m, v in zip(metadata, videos)]
            data = {"pixel_values_videos": torch.cat(patches), "video_grid_thw": torch.tensor(grids)}
            feature = BatchFeature(data=data)
            if return_metadata:
                feature["video_metadata"] = metadata
            return feature

    globals()["FramesVideoProcessor"] = FramesVideoProcessor
    return FramesVideoProcessor


def _processor_class():
    """``Qwen2_5_VLProcessor`` accepting :class:`FramesVideoProcessor`: its constructor looks a
    video processor's base class up in transformers' video-processor registry, which is a
    placeholder without torchvision. Everything else is the processor's own code."""
    from transformers import Qwen2_5_VLProcessor

    frames_processor = _video_processor_class()

    class FramesQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and isinstance(argument, frames_processor):
                return frames_processor
            return super().check_argument_for_proper_class(argument_name, argument)

    return FramesQwen2_5_VLProcessor


def _read_json(model: str, name: str) -> dict | None:
    """``name`` from a local folder or a Hub repo (downloaded into the HF cache), or None."""
    local = Path(model).expanduser()
    if local.is_dir():
        path = local / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    from transformers.utils import cached_file

    found = cached_file(model, name, _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
    return json.loads(Path(found).read_text(encoding="utf-8")) if found else None


def _chat_template(model: str, tokenizer) -> str:
    """The processor's chat template (``chat_template.jinja``/``.json``), else the tokenizer's."""
    local = Path(model).expanduser()
    if local.is_dir() and (local / "chat_template.jinja").is_file():
        return (local / "chat_template.jinja").read_text(encoding="utf-8")
    if not local.is_dir():
        from transformers.utils import cached_file

        found = cached_file(model, "chat_template.jinja", _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False)
        if found:
            return Path(found).read_text(encoding="utf-8")
    data = _read_json(model, "chat_template.json")
    if data and data.get("chat_template"):
        return data["chat_template"]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise CaptionModelError(f"{model}: no chat template (chat_template.jinja/.json or the tokenizer's); is it an Instruct model?")


MIN_TRANSFORMERS = (5, 0)  # the processor API used here (video metadata, mm_token_type_ids); tested with 5.25


def check_transformers() -> None:
    import transformers

    version = tuple(int(part) for part in re.findall(r"\d+", transformers.__version__)[:2])
    if version < MIN_TRANSFORMERS:
        raise CaptionModelError(f"frametuner caption needs transformers >= {'.'.join(map(str, MIN_TRANSFORMERS))} "
                                f"(found {transformers.__version__}): pip install -U 'transformers>=5'")


def build_processor(model: str, settings: VisionSettings | None = None):
    """``Qwen2_5_VLProcessor`` of a checkpoint: its tokenizer (left padding) and chat template,
    transformers' Pillow image processor, and :class:`FramesVideoProcessor`."""
    check_transformers()
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if settings is None:
        settings = VisionSettings.from_configs(_read_json(model, "preprocessor_config.json"), _read_json(model, "video_preprocessor_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.padding_side = "left"  # the model card: batched generation pads on the left
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=settings.patch_size, merge_size=settings.merge_size, temporal_patch_size=settings.temporal_patch_size,
        image_mean=list(settings.image_mean), image_std=list(settings.image_std),
        size={"shortest_edge": settings.image_min_pixels, "longest_edge": settings.image_max_pixels},
    )
    video_processor = _video_processor_class()(settings)
    processor = _processor_class()(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                                    chat_template=_chat_template(model, tokenizer))
    return processor, settings


def messages_for(media: Media, instruction: str) -> list[dict]:
    """The model card's message: the clip (or image) then the instruction, in one user turn."""
    item = {"type": "video", "video": str(media.path)} if media.kind == "video" else {"type": "image", "image": str(media.path)}
    return [{"role": "user", "content": [item, {"type": "text", "text": instruction}]}]


def processor_inputs(processor, batch: Sequence[Media], instructions: Sequence[str]):
    """``processor(text=..., images=..., videos=..., video_metadata=..., padding=True, return_tensors="pt")``."""
    texts = [processor.apply_chat_template(messages_for(media, text), tokenize=False, add_generation_prompt=True)
             for media, text in zip(batch, instructions)]
    images = [media.frames[0] for media in batch if media.kind == "image"]
    videos = [media.frames for media in batch if media.kind == "video"]
    kwargs: dict = {}
    if videos:
        kwargs["video_metadata"] = [
            {"total_num_frames": media.total_frames, "fps": media.fps or 2.0, "frames_indices": media.indices}
            for media in batch if media.kind == "video"
        ]
    return processor(text=texts, images=images or None, videos=videos or None, padding=True, return_tensors="pt", **kwargs)


def _check_architecture(model: str) -> None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise CaptionModelError(f"--model {model}: cannot read its config ({error})") from None
    if config.model_type not in COMPATIBLE_MODEL_TYPES:
        raise CaptionModelError(
            f"--model {model} is a {config.model_type!r} model; the captioner runs Qwen2.5-VL checkpoints "
            f"(model_type {', '.join(COMPATIBLE_MODEL_TYPES)}: Qwen/Qwen2.5-VL-3B/7B/32B/72B-Instruct and their fine-tunes)"
        )


def quantise_language_model(model: torch.nn.Module, weights: str, device: torch.device | str | None = None) -> int:
    """optimum-quanto weight-only int8/int4 for the language model's Linear layers (the vision
    tower, embeddings and output head stay as they are); returns how many were quantised.

    Layer by layer: each decoder layer moves to ``device`` (default: where it is) and is
    quantised and frozen there before the next one moves, so a GPU never holds more than one
    layer in bf16 beside the quantised ones (Qwen2.5-VL-7B int8 fits in ~12 GB this way).
    """
    from optimum.quanto import freeze, qint4, qint8, quantize

    qtype = {"int8": qint8, "int4": qint4}[weights]
    language = model.model.language_model
    count = 0
    for layer in language.layers:
        if device is not None:
            layer.to(device)
        names = [name for name, module in layer.named_modules() if isinstance(module, torch.nn.Linear)]
        quantize(layer, weights=qtype, include=names)
        freeze(layer)
        count += len(names)
    return count


def resolve_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class QwenVLCaptioner:
    """A Qwen2.5-VL model and its processor, captioning batches of :class:`Media`."""

    def __init__(self, model, processor, settings: VisionSettings, *, name: str, max_new_tokens: int | None = None,
                 generate_kwargs: dict | None = None):
        self.model, self.processor, self.settings, self.name = model, processor, settings, name
        configured = getattr(model.generation_config, "max_new_tokens", None)
        self.max_new_tokens = max_new_tokens or configured or DEFAULT_MAX_NEW_TOKENS
        self.generate_kwargs = dict(generate_kwargs or {})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load(self, path: Path, kind: str) -> Media:
        """Decode one file for the model (thread-safe; raises ``DecodeError``)."""
        from .frames import load_image, load_video

        if kind == "image":
            return load_image(path, self.settings.image_size)
        return load_video(path, self.settings.frames, self.settings.video_size, self.settings.temporal_patch_size)

    @torch.inference_mode()
    def caption(self, batch: Sequence[Media], instructions: Sequence[str]) -> list[str]:
        """Decoded answers, one per item (special tokens dropped, not yet normalised)."""
        inputs = processor_inputs(self.processor, batch, instructions).to(self.device)
        dtype = self.model.model.visual.dtype
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs:
                inputs[key] = inputs[key].to(dtype)
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **self.generate_kwargs)
        answers = output[:, inputs["input_ids"].shape[1]:]  # left padding: every prompt ends at the same column
        return self.processor.batch_decode(answers, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def load_qwen_vl(model: str, *, device: str | None = None, dtype: str = "auto", quantise: str = "none",
                 max_new_tokens: int | None = None, frames: int | None = None) -> QwenVLCaptioner:
    """A checkpoint (Hub id or local folder) loaded for captioning: bf16 on a GPU (fp32 on a CPU),
    or with the language model's weights in int8/int4 (optimum-quanto)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    if quantise not in QUANTISATIONS:
        raise CaptionModelError(f"--quantize {quantise!r}: choose one of {', '.join(QUANTISATIONS)}")
    _check_architecture(model)
    target = resolve_device(device)
    torch_dtype = {"auto": torch.bfloat16 if target.type == "cuda" else torch.float32, "bf16": torch.bfloat16,
                   "fp16": torch.float16, "fp32": torch.float32}[dtype]
    processor, settings = build_processor(model)
    if frames is not None:
        settings = VisionSettings(**{**settings.__dict__, "frames": frames})
    log.info("caption: loading %s (%s%s) on %s", model, str(torch_dtype).removeprefix("torch."),
             "" if quantise == "none" else f", {quantise} weights", target)
    if quantise == "none":
        # straight onto the device (no second copy in host memory)
        placement = {"device_map": {"": str(target)}} if target.type == "cuda" else {}
        network = Qwen2_5_VLForConditionalGeneration.from_pretrained(model, dtype=torch_dtype, **placement).eval()
    else:
        network = Qwen2_5_VLForConditionalGeneration.from_pretrained(model, dtype=torch_dtype).eval()
        count = quantise_language_model(network, quantise, target)  # layer by layer onto the device
        log.info("caption: %d language-model layers quantised to %s (optimum-quanto)", count, quantise)
    network.to(target)
    return QwenVLCaptioner(network, processor, settings, name=model, max_new_tokens=max_new_tokens)
