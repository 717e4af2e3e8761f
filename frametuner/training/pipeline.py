"""``frametuner train``: scan the datasets, fill the caches, train from them, validate.

The encoders run only inside :func:`frametuner.cache.run.run_cache` and are freed before
the DiT is built; training then reads cached latents and text embeddings only.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..cache.entries import pad_text
from ..config import ConfigError

if TYPE_CHECKING:
    from ..sampling.pipeline import VideoSettings

log = logging.getLogger(__name__)


class CachedTrainingData:
    """:class:`~frametuner.training.data.TrainingData` over the on-disk caches.

    Batch order comes from the data room's resumable bucket sampler (never mixing buckets
    or i2v with t2v); text is padded to the batch's longest caption only: the family's
    denoiser restores its full padded length (``defaults.text_length``) exactly.
    """

    def __init__(self, dataset, sampler, mixes: dict | None = None):
        self.dataset = dataset
        self.sampler = sampler
        self.mixes = mixes or {}  # dataset id -> the ConditioningMix its samples train with
        self._empty: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_scan(cls, scan, config, *, caches=None, num_replicas: int = 1, rank: int = 0) -> "CachedTrainingData":
        """``caches``: the run's (TextCache, LatentCache) when already open."""
        from ..cache import CachedDataset
        from ..cache.run import open_config_caches, open_config_conditioning_cache
        from ..data.sampler import BucketBatchSampler

        text_cache, latent_cache = caches or open_config_caches(config)
        dataset = CachedDataset(
            scan.samples, text_cache=text_cache, latent_cache=latent_cache, pad_to=None,
            conditioning_cache=open_config_conditioning_cache(config),
        )
        sampler = BucketBatchSampler.from_scan(scan, config, num_replicas=num_replicas, rank=rank)
        mixes = {result.config.id: result.config.conditioning_mix for result in scan.datasets.values()}
        return cls(dataset, sampler, mixes)

    def batches_per_epoch(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        if self.sampler.epoch != epoch:
            self.sampler.set_epoch(epoch)
        for indices in self.sampler:
            batch = self.dataset.collate([self.dataset[i] for i in indices])
            # A batch holds one dataset's samples (the sampler's groups), so one mix per batch.
            batch["conditioning"] = self.mixes.get(self.dataset.samples[indices[0]].dataset_id)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def empty_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty prompt's real tokens ``[n, C]`` (the trainer pads them per batch), read once."""
        if self._empty is None:
            text = self.dataset.text_cache.load("")
            self._empty = text, torch.ones(text.shape[0], dtype=torch.int64)
        return self._empty


@dataclass
class ValidationPrompt:
    prompt: str
    cond_latents: torch.Tensor | None = None  # [C, k, h, w]: image-to-video (k = 1) or a continuation's frames
    kind: str = "prompt"  # "prompt" (t2v, or i2v from an eval dataset) or "continuation"
    index: int | None = None  # column in validation/index.html (default: its position)
    size: tuple[int, int] | None = None  # (height, width) of its conditioning latents; default validation_resolution
    # The family's sampler inputs from an eval clip's cached training conditioning ({name: [1, ...]}), for a
    # denoiser that reads the image through them (denoise(conditioning=...)); their clip fixes size and frames.
    conditioning: dict[str, torch.Tensor] | None = None
    frames: int | None = None  # video frames; default validation_num_video_frames


class Validator:
    """Renders validation videos from cached prompt embeddings with the model being trained.

    Decoding needs the VAE: it is loaded for each validation only where memory allows
    (always on the CPU; on a GPU when enough memory is free), otherwise the latents are
    saved and decoded after training (or with ``frametuner decode``) — never an OOM.
    """

    def __init__(self, config, spec, prompts: list[ValidationPrompt], text_cache):
        self.config, self.spec, self.prompts, self.text_cache = config, spec, prompts, text_cache
        self.root = spec.checkpoint_root(config.model_flavour, config.pretrained_model_name_or_path)
        self.output_dir = Path(config.output_dir)
        self.folder = self.output_dir / "validation"
        self.deferred = False

    @classmethod
    def from_config(cls, config, spec, scan, *, caches=None) -> "Validator | None":
        """``caches``: the run's (TextCache, LatentCache) when already open.

        A model that needs per-sample training conditioning (``ModelFamily.training_conditioning``,
        e.g. an image-to-video denoiser reading the image through extra inputs) validates on the
        eval clips with their cached conditioning entries, the very tensors training reads, at
        each clip's size and length; validation prompts without an image are refused
        (:func:`check_validation_setup`)."""
        from ..cache.run import open_config_caches, validation_prompts

        conditioning_cache = check_validation_setup(config)
        text_cache, latent_cache = caches or open_config_caches(config)
        prompts: list[ValidationPrompt] = []
        if config.validation_using_datasets:
            for sample in scan.dataset_samples(config.eval_dataset_id):
                if conditioning_cache is not None:
                    bucket = sample.bucket
                    entry = conditioning_cache.load(sample)
                    prompts.append(ValidationPrompt(
                        sample.caption, size=(bucket.height, bucket.width), frames=bucket.frames,
                        conditioning={name: tensor[None] for name, tensor in entry.items()},
                    ))
                    continue
                cond = None
                if sample.is_i2v:
                    entry = latent_cache.load(sample)
                    cond = entry.get("cond_latent")
                    cond = cond if cond is not None else entry["latents"][:, :1]
                prompts.append(ValidationPrompt(sample.caption, cond))
        else:
            prompts = [ValidationPrompt(p) for p in validation_prompts(config)[:-1]]  # last one is the negative prompt
        for index, item in enumerate(prompts):
            item.index = index
        prompts += continuation_prompts(config, spec, scan, latent_cache, prompts)
        if not prompts:
            return None
        return cls(config, spec, prompts, text_cache)

    def _vae_fits(self, device: torch.device) -> bool:
        if device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(device)
        height, width = self.config.validation_size
        # Tiled VAE decoding of a 480p clip peaks near 5 GB; keep a margin.
        needed = 6 * 2**30 * max(1.0, height * width / (480 * 832))
        return free > needed

    def __call__(self, trainer, step: int) -> None:
        """Render every prompt (main process). Under FSDP the trainer calls this on every
        rank: the others run the same forwards, which the sharded model needs, and write nothing."""
        from ..models.family import TextConditioning
        from ..sampling import render_validation

        config = self.config
        model = trainer.accelerator.unwrap_model(trainer.model)
        device = trainer.accelerator.device
        writer = trainer.accelerator.is_main_process
        height, width = config.validation_size
        vae = None
        if writer and self._vae_fits(device):
            vae = self.spec.load_vae(self.root, device=device, dtype=self.spec.encoder_dtype(config.mixed_precision))
        elif writer:
            self.deferred = True
        negative_text = self.text_cache.load(config.validation_negative_prompt)
        distill_lora = self._apply_distill_lora(model)
        long_videos = config.validation_segments > 0 and any(item.kind == "prompt" for item in self.prompts)
        if long_videos and (vae is None or trainer.sharded):  # each segment re-encodes the last one's frames
            if writer:
                log.warning(
                    "validation_segments: long validation videos skipped at step %d (%s)",
                    step, "not rendered under FSDP" if trainer.sharded else "the VAE does not fit beside the DiT now",
                )
            long_videos = False
        try:
            for position, item in enumerate(self.prompts):
                index = item.index if item.index is not None else position
                size = item.size or (height, width)
                settings = self.video_settings(size, item.frames)
                # Both prompts padded to the longer one (the CFG batch needs one length); the
                # family's denoiser makes this exactly its full-length padding.
                text = self.text_cache.load(item.prompt)
                length = max(text.shape[0], negative_text.shape[0])
                embeds, mask = pad_text(text, length)
                negative, negative_mask = pad_text(negative_text, length)
                text = TextConditioning(embeds[None], mask[None], negative[None], negative_mask[None])
                outputs = render_validation(
                    model, vae, spec=self.spec, validation_dir=self.folder, step=step, prompt_index=index, prompt=item.prompt,
                    text=text, video=settings, cond_latents=item.cond_latents, device=device, write=writer,
                    kind=item.kind, sampler_options=self.continuation_options if item.kind == "continuation" else None,
                    conditioning=item.conditioning,
                )
                if writer:
                    self._report(trainer, step, index, item.prompt, outputs, kind=item.kind)
                if long_videos and item.kind == "prompt" and outputs is not None and outputs.frames is not None:
                    from ..sampling.validation import render_long_validation

                    long = render_long_validation(
                        model, vae, outputs.frames, spec=self.spec, validation_dir=self.folder, step=step, prompt_index=index,
                        prompt=item.prompt, text=text, video=settings, segments=config.validation_segments,
                        cond_frames=config.validation_cond_frames, sampler_options=self.continuation_options, device=device,
                    )
                    self._report(trainer, step, index, item.prompt, long, kind="long")
        finally:
            if distill_lora is not None:
                distill_lora.remove()
            if vae is not None:
                del vae
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    def _apply_distill_lora(self, model):
        """``validation_distill_lora``: the distillation LoRA stacked on the trained one for
        this validation (removed afterwards); None when unset."""
        if not self.config.validation_distill_lora:
            return None
        from ..config import resolve_input_path
        from ..lora import apply_lora

        return apply_lora(model, resolve_input_path(self.config, self.config.validation_distill_lora))

    def video_settings(self, size: tuple[int, int], frames: int | None = None) -> VideoSettings:
        """The config's validation_* settings as one object (``size``: height, width; ``frames``:
        the video's frames, default ``validation_num_video_frames``). With
        ``validation_distill_lora``: the family's distilled steps and guidance unless set."""
        from ..sampling.pipeline import VideoSettings

        config = self.config
        distill = bool(config.validation_distill_lora)
        steps, guidance = config.validation_num_inference_steps, config.validation_guidance
        if distill:  # the family's distilled steps and guidance, unless the config sets them
            steps = steps if "validation_num_inference_steps" in config.model_fields_set else None
            guidance = guidance if "validation_guidance" in config.model_fields_set else None
        return VideoSettings(
            height=size[0], width=size[1], num_frames=frames or config.validation_num_video_frames,
            steps=steps, guidance=guidance,
            seed=self.seed, fps=config.validation_fps, crf=config.validation_video_crf, distill=distill,
        )

    @property
    def continuation_options(self) -> dict[str, bool]:
        """The family's continuation sampler options (e.g. a KV cache for the conditioning frames)."""
        from ..memory import offloads_weights
        from ..sampling.long_video import continuation_options

        distill = bool(self.config.validation_distill_lora)
        return continuation_options(self.spec.info, distill=distill, offloaded_weights=offloads_weights(self.config))

    @property
    def seed(self) -> int:
        config = self.config
        return config.validation_seed if config.validation_seed is not None else (config.seed or 0)

    def _report(self, trainer, step: int, index: int, prompt: str, outputs, kind: str = "prompt") -> None:
        relative = lambda p: str(Path(p).resolve().relative_to(self.output_dir.resolve())) if p is not None else None  # noqa: E731
        trainer.events.emit(
            "validation", step=step, prompt_index=index, prompt=prompt, kind=kind,
            video=relative(outputs.video), contact_sheet=relative(outputs.contact_sheet), latents=relative(outputs.latents),
            segment_sheets=[relative(p) for p in outputs.segment_sheets],
        )
        if outputs.contact_sheet is not None and self.config.report_to == "tensorboard":
            import numpy as np
            from PIL import Image

            tracker = trainer.accelerator.get_tracker("tensorboard", unwrap=True)
            sheet = np.asarray(Image.open(outputs.contact_sheet).convert("RGB"))
            tag = f"validation/prompt{index:02d}" + ("" if kind == "prompt" else f"_{kind}")
            tracker.add_image(tag, sheet, global_step=step, dataformats="HWC")

    def finish(self) -> None:
        """Decode validations that were deferred for lack of memory (the DiT is gone by now)."""
        if not self.deferred:
            return
        from ..sampling import decode_pending_validations

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        vae = self.spec.load_vae(self.root, device=device, dtype=self.spec.encoder_dtype(self.config.mixed_precision))
        decoded = decode_pending_validations(self.folder, vae)
        log.info("decoded %d deferred validation videos into %s", len(decoded), self.folder)


def check_validation_setup(config):
    """Refuse, before anything is cached or loaded, validation the model cannot render: a
    denoiser that needs per-sample conditioning (``ModelFamily.training_conditioning``, e.g. an
    image-to-video model that always reads an image) gets it only from the eval clips' cache
    entries, so prompts without an image (``validation_prompt`` / ``validation_prompt_file``)
    are a config error unless ``validation_using_datasets`` takes them from ``eval_dataset_id``.
    Returns the run's ConditioningCache (None when the model needs none)."""
    from ..cache.run import open_config_conditioning_cache
    from ..config.schema import image_only_validation_message

    conditioning_cache = open_config_conditioning_cache(config)
    problem = image_only_validation_message(config) if conditioning_cache is not None else None
    if problem:
        raise ConfigError([problem])
    return conditioning_cache


def continuation_prompts(config, spec, scan, latent_cache, prompts: list[ValidationPrompt]) -> list[ValidationPrompt]:
    """The continuation validations of ``validation_continuation``.

    ``"eval_dataset"``: each clip of ``eval_dataset_id`` continued from its first
    ``validation_cond_frames`` frames, whose latents are the first latent frames of the
    clip's cache entry (the VAE is causal: docs/conditioning.md), at the clip's size.
    A video file: its last ``validation_cond_frames`` frames at ``validation_resolution``,
    encoded once here (before the DiT is loaded), continued with each validation prompt.
    """
    from ..config import resolve_input_path
    from ..config.schema import CONTINUE_EVAL_DATASET

    source = config.validation_continuation
    if not source:
        return []
    frames = config.validation_cond_frames
    k = spec.geometry.latent_frames(frames)
    start = len(prompts)
    if source == CONTINUE_EVAL_DATASET:
        items = []
        for sample in scan.dataset_samples(config.eval_dataset_id):
            latents = latent_cache.load(sample)["latents"]
            if latents.shape[1] <= k:
                log.warning("validation_continuation: %s has %d frames, too few to continue from %d; skipped", sample.source.path, sample.bucket.frames, frames)
                continue
            items.append(ValidationPrompt(sample.caption, latents[:, :k], "continuation", start + len(items), (sample.bucket.height, sample.bucket.width)))
        return items
    path = resolve_input_path(config, source)
    if path is None or not Path(path).is_file():
        raise ConfigError([f"'validation_continuation': {path} is not a video file; give a video (or 'eval_dataset')"])
    cond = encode_continuation_video(config, spec, path)
    texts = list(dict.fromkeys(item.prompt for item in prompts)) or [""]
    return [ValidationPrompt(text, cond, "continuation", start + number) for number, text in enumerate(texts)]


def encode_continuation_video(config, spec, path) -> torch.Tensor:
    """Normalised latents ``[C, K, h, w]`` of the last ``validation_cond_frames`` frames of ``path``."""
    from ..sampling.validation import read_last_frames

    height, width = config.validation_size
    pixels = read_last_frames(path, config.validation_cond_frames, height, width)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = spec.checkpoint_root(config.model_flavour, config.pretrained_model_name_or_path)
    vae = spec.load_vae(root, device=device, dtype=spec.encoder_dtype(config.mixed_precision))
    latents = vae.encode(pixels).float().cpu()
    del vae
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return latents


def scan_and_cache(config, state):
    """Scan the datasets and fill the caches, the work split over the run's ranks.

    Rank 0 scans and sends the result to the others, so every rank batches the very same
    sample list. Each rank then encodes its share of the captions and clips (no encode is
    done twice), and all learn which samples failed; that exchange is the barrier after
    which every cache entry exists.
    """
    from accelerate.utils import broadcast_object_list, gather_object

    from ..cache.run import run_cache
    from ..data import scan_datasets

    distributed = state.num_processes > 1
    scan = scan_datasets(config) if state.is_main_process else None
    if distributed:
        scan = broadcast_object_list([scan])[0]
    report = run_cache(
        config, scan=scan, rank=state.process_index, world_size=state.num_processes,
        device=state.device if distributed else None, progress=state.is_main_process,
    )
    failed = gather_object(report.failed) if distributed else report.failed
    if failed:
        if state.is_main_process:
            for source, message in failed:
                log.warning("not cached, left out of training: %s: %s", source, message)
        names = {str(source) for source, _ in failed}
        for dataset in scan.datasets.values():
            dataset.samples = [s for s in dataset.samples if str(s.source.path) not in names]
    return scan


def train(config) -> int:
    """Entry point of ``frametuner train`` (on every rank of a multi-GPU run)."""
    from ..cache.run import open_config_caches
    from ..models.registry import load_spec
    from .distributed import process_state
    from .trainer import Trainer

    from ..config import validate_dataset_list

    problems = validate_dataset_list(config)  # the one dataset validator (config check and the web UI's Check too)
    if problems:
        raise ConfigError([str(problem) for problem in problems])
    check_validation_setup(config)  # up front: not after caching
    spec = load_spec(config.model_family)
    state = process_state()
    scan = scan_and_cache(config, state)
    if state.is_main_process:
        from ..data.report import conditioning_table

        table = conditioning_table(scan)  # the mix per dataset and the clips too short for a drawn mode
        if table is not None:
            from ..console import console

            console().print(table)
    caches = open_config_caches(config)
    data = CachedTrainingData.from_scan(scan, config, caches=caches, num_replicas=state.num_processes, rank=state.process_index)
    validator = Validator.from_config(config, spec, scan, caches=caches)
    trainer = Trainer(config, data, validator=validator)
    result = trainer.train()
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if state.is_main_process:
        if validator is not None and "stopped" not in result:
            validator.finish()
        print_summary(config, result)
    return 0


def print_summary(config, result: dict) -> None:
    from rich.table import Table

    from ..console import console

    output = Path(config.output_dir)
    table = Table(title="frametuner: " + ("stopped" if "stopped" in result else "training finished"), show_header=False)
    table.add_row("steps", str(result["step"]))
    if "seconds" in result:
        table.add_row("time", f"{result['seconds']:.1f} s")
    table.add_row("checkpoint", str(result["checkpoint"]))
    for fmt, path in (result.get("lora") or {}).items():
        table.add_row(f"LoRA ({fmt})", str(path))
    validation = output / "validation" / "index.html"
    if validation.exists():
        table.add_row("validation", str(validation))
    table.add_row("events", str(output / "events.jsonl"))
    if "stopped" in result:
        table.add_row("resume with", resume_command(config))
    console().print(table)


def resume_command(config) -> str:
    """The exact command that continues a stopped run: the command line that started it
    (or ``frametuner train --config FILE``) with ``--resume_from_checkpoint latest``."""
    import shlex

    command = list(config._command or [])
    if not command:
        command = ["frametuner", "train"] + (["--config", str(config._config_file)] if config._config_file else [])
    kept, skip = [], False
    for token in command:
        if skip:
            skip = False
        elif token == "--resume_from_checkpoint":
            skip = True
        elif not token.startswith("--resume_from_checkpoint="):
            kept.append(token)
    return shlex.join([*kept, "--resume_from_checkpoint", "latest"])
