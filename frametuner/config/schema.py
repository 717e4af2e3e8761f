"""The training configuration a user writes (``config.json``), typed and validated.

Every field carries a description and a group (model, data, lora, optimisation,
validation, memory, logging, distributed): the CLI flags, ``frametuner config check``,
the README table and the web UI form are all generated from this one schema.
No torch here.
"""

from __future__ import annotations

import re
from typing import Any, Literal, NamedTuple

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_serializer, model_validator

from ..models import registry
from .conditioning import ConditioningMix

GROUPS = ("model", "data", "lora", "optimisation", "validation", "memory", "logging", "distributed")

from .precision import FP8_COMPUTE_LAYERS, QUANTISED_PRECISIONS
BasePrecision = Literal["no_change", "bf16", "fp16", "fp32", "int8-quanto", "int4-quanto", "fp8-torchao"]
LoraFormat = Literal["peft", "upstream", "comfyui"]


# Keys that name files or folders carry a ``path`` kind in their field metadata; this is the
# one declaration of them. The web server confines every marked key of a config it receives
# over HTTP (``path_fields``), so a new path key is confined by marking it, nothing else.
PATH_INPUT = "input"  # a file or folder the run reads (relative: beside the config/dataset file)
PATH_OUTPUT = "output"  # a folder the run writes into
PATH_MODEL = "model"  # a hub id, or a local model folder the run reads
PATH_NAME = "name"  # one folder name the run creates under its output (no separators)
PATH_KINDS = (PATH_INPUT, PATH_OUTPUT, PATH_MODEL, PATH_NAME)


class PathKey(NamedTuple):
    """How a path-bearing key is read: its kind, and the words it also takes that are not paths ('latest')."""

    kind: str
    keywords: tuple[str, ...] = ()


def _field(
    default: Any, group: str, description: str, *, path: str | None = None, path_keywords: tuple[str, ...] = (), **kwargs: Any
) -> Any:
    extra = kwargs.pop("json_schema_extra", {}) or {}
    if path is not None:
        assert path in PATH_KINDS, path
        extra = {**extra, "path": path, **({"path_keywords": list(path_keywords)} if path_keywords else {})}
    return Field(default, description=description, json_schema_extra={"group": group, **extra}, **kwargs)


def path_fields(model: type[BaseModel]) -> dict[str, PathKey]:
    """The keys of ``model`` (TrainConfig, DatasetConfig) that name files or folders, with how each is read."""
    found = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("path"):
            found[name] = PathKey(str(extra["path"]), tuple(extra.get("path_keywords", ())))
    return found


# The model family a config trains when it names none (the one family name outside models/).
DEFAULT_MODEL_FAMILY = "longcat_video"


def parse_resolution(text: str, family: str = DEFAULT_MODEL_FAMILY) -> tuple[int, int]:
    """``"HxW"`` -> (height, width); both must be positive multiples of the family's pixel grid."""
    info = registry.family_info(family)
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match:
        raise ValueError(f"{text!r} is not HEIGHTxWIDTH (for example '{info.defaults.resolution}')")
    return info.check_size(int(match.group(1)), int(match.group(2)), text)


# validation_continuation's value that continues the eval dataset's clips instead of a file.
CONTINUE_EVAL_DATASET = "eval_dataset"


def check_frame_count(frames: int, family: str = DEFAULT_MODEL_FAMILY) -> int:
    """``frames`` if the family's VAE can pack it (its frame rule), else ValueError with the nearest valid counts."""
    return registry.family_info(family).check_frames(frames)


# Keys whose default is the model family's (``null`` in the schema): filled in at validation
# from ``FamilyDefaults`` unless the config sets them.
FAMILY_DEFAULTS = {
    "flow_schedule_shift": lambda info: info.defaults.training_shift,
    "aspect_bucket_alignment": lambda info: info.defaults.bucket_alignment,
    "validation_resolution": lambda info: info.defaults.resolution,
    "validation_num_video_frames": lambda info: info.defaults.frames,
    "validation_guidance": lambda info: info.defaults.guidance,
    "validation_fps": lambda info: info.defaults.fps,
    "lora_export_formats": lambda info: list(info.lora_formats),
    "validation_cond_frames": lambda info: info.continuation.cond_frames if info.continuation else None,
}


def _family_of(info: ValidationInfo) -> str:
    """The model family of the config being validated (a bad one was reported already: the default then)."""
    family = (info.data or {}).get("model_family")
    return family if family in registry.families() else DEFAULT_MODEL_FAMILY


class DistributedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="ddp: replicate the model; fsdp: shard it per block (FSDP2)")
    fsdp_reshard_after_forward: bool = Field(True, description="FSDP2: free gathered block weights after each forward")
    find_unused_parameters: bool = Field(False, description="DDP: search for parameters without gradients each step")


def image_only_validation_message(config: "TrainConfig") -> str | None:
    """Why ``config``'s validation prompt cannot be rendered by a model that samples only from an
    image, or None when it sets no prompt or takes its validations from the eval clips."""
    key = "validation_prompt" if config.validation_prompt else "validation_prompt_file" if config.validation_prompt_file else None
    if key is None or config.validation_using_datasets:
        return None
    return (
        f"'{key}': the model '{config.model_family}' / '{config.model_flavour}' samples only from an input image (its conditioning), which a "
        "validation prompt does not give; set validation_using_datasets: true and eval_dataset_id (each eval clip is "
        "rendered from its cached image conditioning and caption), or set no validation prompt"
    )


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    _config_dir: Path | None = PrivateAttr(default=None)  # folder of the file it came from
    _config_file: str | None = PrivateAttr(default=None)  # the file itself, for messages
    _command: list[str] | None = PrivateAttr(default=None)  # the command line that started the run (resume hints)

    # ------------------------------------------------------------------ model
    model_family: str = _field(DEFAULT_MODEL_FAMILY, "model", "Model family (see `frametuner models`)")
    model_flavour: str | None = _field(
        None, "model", "Flavour of the family (see `frametuner models`): the released checkpoint, or 'tiny' (local random model for demos); null = the family's default"
    )
    model_type: Literal["lora", "full"] = _field("lora", "model", "Train a LoRA adapter or all DiT weights")
    pretrained_model_name_or_path: str | None = _field(
        None, "model", "Hub id or local folder in the upstream layout (dit/ text_encoder/ tokenizer/ vae/ scheduler/); null = from the flavour",
        path=PATH_MODEL,
    )
    base_model_precision: BasePrecision = _field(
        "no_change", "model", "Storage of the frozen base weights: no_change (= mixed_precision dtype), bf16, fp16, fp32, int8-quanto, int4-quanto, fp8-torchao"
    )
    mixed_precision: Literal["bf16", "fp16", "no"] = _field("bf16", "model", "Compute precision through accelerate ('no' = float32)")
    attention_implementation: Literal["auto", "sdpa", "xformers", "bsa"] = _field(
        "auto", "model", "auto: block-sparse on CUDA where shapes allow and bsa_* is set, SDPA otherwise"
    )
    bsa_sparsity: float | None = _field(None, "model", "Block-sparse attention: fraction of key chunks skipped (0.9375 = keep 1/16)", ge=0.0, lt=1.0)
    bsa_chunk_3d_shape: list[int] | None = _field(None, "model", "Block-sparse attention chunk (t, h, w) in latent patches, default [4, 4, 4]")
    bsa_cdf_threshold: float | None = _field(None, "model", "Block-sparse attention: keep key chunks until this softmax mass", gt=0.0, le=1.0)
    flow_schedule_shift: float | None = _field(None, "model", "Flow-matching sigma shift s' = k s / (1 + (k-1) s) of training (and sampling); null = the family's", gt=0.0)
    gradient_checkpointing: bool = _field(True, "model", "Recompute each block in the backward to save memory")
    gradient_checkpointing_policy: Literal["auto", "full", "save_attention"] = _field(
        "auto", "model", "full: recompute whole blocks; save_attention: keep attention outputs (faster, ~0.3 GB/block at 480p); auto: save them in as many blocks as activation_memory_budget_gb allows"
    )
    activation_memory_budget_gb: float | None = _field(
        None, "model", "Peak GPU memory the auto checkpointing policy aims for (null = the card's capacity minus 6%, at least 2 GB: 74 GB on an 80 GB H100)", gt=0
    )
    compile_transformer: bool | None = _field(None, "model", "Regional torch.compile of the DiT blocks (null = on with CUDA, except under group offload or an int4-quanto base)")
    fp8_compute: bool = _field(
        False, "model", "Run the frozen base Linear layers' matmuls in float8 (torchao float8, forward and input gradient; LoRA stays bf16/fp32); needs a CUDA GPU with float8 (sm89+: RTX 40xx, L4, H100) and torchao; LoRA training and sampling"
    )
    fp8_compute_scaling: Literal["rowwise", "tensorwise"] = _field(
        "rowwise", "model", "Scales of fp8_compute: rowwise (one per row, more accurate) or tensorwise (one per tensor, fastest)"
    )
    fp8_compute_layers: Literal[FP8_COMPUTE_LAYERS] = _field(
        "all_but_cross", "model", "Which frozen Linears fp8_compute runs in float8: all_but_cross (every one but the "
        "cross-attention's, which carried most of float8's output error on the H100 benchmark), all (a little faster) "
        "or ffn (the feed-forward ones only); README, Speed defaults, has the measured error and step time of each"
    )

    # ------------------------------------------------------------------ data
    data_backend_config: str | None = _field(None, "data", "Path of the dataset list (JSON/JSONC); required to train", path=PATH_INPUT)
    train_batch_size: int = _field(1, "data", "Clips per step per GPU (a batch never mixes buckets)", ge=1)
    aspect_bucket_alignment: int | None = _field(None, "data", "Pixel grid of bucket sizes; null = the family's (64 for a family whose block-sparse attention wants it)", ge=16, multiple_of=16)
    cache_dir: str | None = _field(None, "data", "Where latents and text embeddings are cached; default <output_dir>/cache", path=PATH_OUTPUT)
    caption_dropout_probability: float = _field(0.0, "data", "Probability of training a sample with the empty caption", ge=0.0, le=1.0)
    dataloader_num_workers: int = _field(0, "data", "Background workers reading cache files", ge=0)
    conditioning: ConditioningMix | None = _field(
        None, "data", "Default conditioning mix of video datasets, e.g. {\"t2v\": 0.5, \"i2v\": 0.2, \"vc\": 0.3, \"vc_cond_frames\": [13]} (see docs/conditioning.md); null = text-to-video (image-to-video for is_i2v datasets)"
    )

    # ------------------------------------------------------------------ lora
    lora_rank: int = _field(16, "lora", "LoRA rank", ge=1)
    lora_alpha: float | None = _field(None, "lora", "LoRA alpha; null = lora_rank (scale 1)", gt=0)
    lora_dropout: float = _field(0.0, "lora", "Dropout on the LoRA input", ge=0.0, lt=1.0)
    lora_target_modules: list[str] | None = _field(
        None, "lora", "Module names to wrap; null = the family default (upstream's released LoRA targets)"
    )
    init_lora: str | None = _field(None, "lora", "Start from this LoRA file (any format of the family: PEFT, upstream, ComfyUI)", path=PATH_INPUT)
    lora_export_formats: list[LoraFormat] | None = _field(
        None, "lora", "LoRA files written at each checkpoint and at the end; null = every format the family has (peft, upstream, comfyui)"
    )

    # ------------------------------------------------------------------ optimisation
    learning_rate: float = _field(1e-4, "optimisation", "Peak learning rate", gt=0)
    optimizer: Literal["adamw", "adamw8bit"] = _field("adamw", "optimisation", "adamw (torch, fused on CUDA) or adamw8bit (bitsandbytes, CUDA)")
    adam_beta1: float = _field(0.9, "optimisation", "AdamW beta1", ge=0.0, lt=1.0)
    adam_beta2: float = _field(0.999, "optimisation", "AdamW beta2", ge=0.0, lt=1.0)
    adam_weight_decay: float = _field(0.01, "optimisation", "AdamW decoupled weight decay", ge=0.0)
    adam_epsilon: float = _field(1e-8, "optimisation", "AdamW epsilon", gt=0.0)
    optimizer_state_dtype: Literal["fp32", "bf16"] = _field("fp32", "optimisation", "Dtype of AdamW moments (full fine-tuning)")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "polynomial"] = _field("constant", "optimisation", "Learning-rate schedule")
    lr_warmup_steps: int = _field(0, "optimisation", "Linear warm-up steps", ge=0)
    max_train_steps: int | None = _field(None, "optimisation", "Optimizer steps to train; overrides num_train_epochs", ge=1)
    num_train_epochs: int = _field(1, "optimisation", "Epochs to train when max_train_steps is not set", ge=1)
    gradient_accumulation_steps: int = _field(1, "optimisation", "Micro-batches per optimizer step", ge=1)
    max_grad_norm: float | None = _field(1.0, "optimisation", "Clip the gradient norm (null = no clipping)", gt=0)
    seed: int | None = _field(42, "optimisation", "Seed for weights of new LoRAs, noise, timesteps and data order")
    timestep_sampling: Literal["uniform", "logit_normal"] = _field("uniform", "optimisation", "Distribution of training sigmas before the shift")
    logit_mean: float = _field(0.0, "optimisation", "logit_normal: mean")
    logit_std: float = _field(1.0, "optimisation", "logit_normal: standard deviation", gt=0)
    checkpointing_steps: int = _field(500, "optimisation", "Save a resumable checkpoint every N steps", ge=1)
    checkpoints_total_limit: int | None = _field(3, "optimisation", "Keep at most this many checkpoints (null = all)", ge=1)
    resume_from_checkpoint: str | None = _field(
        None, "optimisation", "'latest' or a checkpoint folder to continue from", path=PATH_INPUT, path_keywords=("latest",)
    )

    # ------------------------------------------------------------------ validation
    validation_prompt: str | None = _field(None, "validation", "Prompt of the validation videos")
    validation_prompt_file: str | None = _field(None, "validation", "Text file with one validation prompt per line", path=PATH_INPUT)
    validation_negative_prompt: str = _field("", "validation", "Negative prompt for CFG ('' = the empty prompt, as upstream)")
    validation_steps: int = _field(500, "validation", "Validate every N steps (also at step 0 and at the end)", ge=1)
    validation_resolution: str | None = _field(None, "validation", "HEIGHTxWIDTH of validation videos, multiples of the family's pixel grid (16); null = the family's")
    validation_num_video_frames: int | None = _field(None, "validation", "Frames of validation videos, by the family's frame rule (4k+1); null = the family's")
    validation_num_inference_steps: int = _field(40, "validation", "Sampling steps", ge=1)
    validation_guidance: float | None = _field(None, "validation", "Classifier-free guidance scale (1.0 = off); null = the family's", ge=0.0)
    validation_seed: int | None = _field(42, "validation", "Seed of validation noise (null = the training seed)")
    validation_fps: int | None = _field(None, "validation", "Frame rate written into validation videos; null = the family's", ge=1)
    validation_video_crf: int = _field(18, "validation", "H.264 quality of validation videos (lower = better)", ge=0, le=51)
    validation_using_datasets: bool = _field(False, "validation", "Take validation captions (and i2v images) from eval_dataset_id")
    eval_dataset_id: str | None = _field(None, "validation", "Dataset id used for validation prompts/images")
    validation_continuation: str | None = _field(
        None, "validation", "Also render a continuation: a video file (its last validation_cond_frames frames are continued, with each validation prompt), or 'eval_dataset' (each clip of eval_dataset_id continued from its first frames)",
        path=PATH_INPUT, path_keywords=(CONTINUE_EVAL_DATASET,),
    )
    validation_cond_frames: int | None = _field(None, "validation", "Conditioning frames of continuation and long validation videos (by the frame rule, below validation_num_video_frames); null = the family's", ge=1)
    validation_distill_lora: str | None = _field(
        None, "validation", "Render validation videos with the family's distilled setting (its distill_steps and distill_guidance) and this distillation LoRA file (the family's released one; any LoRA format) stacked on the trained LoRA; families without a distilled mode refuse it",
        path=PATH_INPUT,
    )
    validation_segments: int = _field(
        0, "validation", "Also render a long video per validation prompt: its video plus N continuation segments, with a contact sheet per segment (0 = off)", ge=0, le=64
    )

    # ------------------------------------------------------------------ memory
    enable_group_offload: bool = _field(False, "memory", "Offload DiT weights to the CPU with diffusers' group offloading")
    group_offload_type: Literal["block_level", "leaf_level"] = _field("block_level", "memory", "Group offload granularity")
    group_offload_blocks_per_group: int = _field(1, "memory", "Blocks per offload group (block_level)", ge=1)
    group_offload_use_stream: bool = _field(False, "memory", "Overlap offload transfers on a CUDA stream")
    musubi_blocks_to_swap: int = _field(0, "memory", "Keep the last N DiT blocks in host memory, streamed in one block ahead", ge=0)
    musubi_block_swap_device: Literal["cpu"] = _field("cpu", "memory", "Where swapped blocks live (pinned host memory)")
    gradient_checkpointing_cpu_offload: bool | None = _field(
        None, "memory", "Keep checkpointed block inputs in pinned host memory until the backward (needs gradient_checkpointing); null = auto: on with CUDA and the auto checkpointing policy, at each shape only if the host has the RAM (logged)"
    )

    # ------------------------------------------------------------------ logging
    output_dir: str = _field("output", "logging", "Checkpoints, LoRA files, validation videos and logs go here", path=PATH_OUTPUT)
    report_to: Literal["none", "tensorboard", "wandb"] = _field("tensorboard", "logging", "Metrics backend")
    tracker_project_name: str = _field("frametuner", "logging", "Project name for the tracker", path=PATH_NAME)
    tracker_run_name: str | None = _field(None, "logging", "Run name for the tracker")

    # ------------------------------------------------------------------ distributed
    num_processes: int = _field(1, "distributed", "GPUs/processes to train on (spawns accelerate launch)", ge=1)
    distributed: DistributedConfig = _field(DistributedConfig(), "distributed", "Multi-GPU strategy")

    # ------------------------------------------------------------------ validators
    @field_validator("model_family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        known = registry.families()
        if value not in known:
            from .errors import did_you_mean

            raise ValueError(f"unknown model family {value!r}{did_you_mean(value, known)}; available: {', '.join(sorted(known))}")
        return value

    @field_validator("validation_resolution")
    @classmethod
    def _resolution(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            parse_resolution(value, _family_of(info))
        return value

    @field_validator("validation_num_video_frames")
    @classmethod
    def _frames(cls, value: int | None, info: ValidationInfo) -> int | None:
        return value if value is None else check_frame_count(value, _family_of(info))

    @field_validator("bsa_chunk_3d_shape")
    @classmethod
    def _chunk(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 3 or any(v < 1 for v in value)):
            raise ValueError(f"{value} must be three positive integers [t, h, w], e.g. [4, 4, 4]")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> "TrainConfig":
        info = registry.family_info(self.model_family)
        for key, default in FAMILY_DEFAULTS.items():  # unset keys follow the family (also after model_family changes)
            if key not in self.model_fields_set or getattr(self, key) is None:
                object.__setattr__(self, key, default(info))
        foreign = [fmt for fmt in self.lora_export_formats if fmt not in info.lora_formats]
        if foreign:
            raise ValueError(
                f"lora_export_formats: {self.model_family} LoRAs cannot be written as {', '.join(foreign)}; "
                f"its formats are {', '.join(info.lora_formats)}"
            )
        if self.model_flavour is None:
            object.__setattr__(self, "model_flavour", info.default_flavour)
        elif self.model_flavour not in info.flavours:
            from .errors import did_you_mean

            raise ValueError(
                f"model_flavour {self.model_flavour!r} is not a flavour of {self.model_family}"
                f"{did_you_mean(self.model_flavour, info.flavours)}; available: {', '.join(info.flavours)}"
            )
        if self.model_type == "full" and self.base_model_precision in QUANTISED_PRECISIONS:
            raise ValueError(
                f"model_type 'full' cannot train a quantised base ({self.base_model_precision}); "
                "use base_model_precision 'bf16' for full fine-tuning, or model_type 'lora'"
            )
        if self.enable_group_offload and self.musubi_blocks_to_swap:
            raise ValueError("enable_group_offload and musubi_blocks_to_swap both move the base weights to host memory; choose one")
        if self.enable_group_offload and self.base_model_precision in ("int8-quanto", "int4-quanto"):
            raise ValueError(
                f"enable_group_offload cannot move {self.base_model_precision} weights (diffusers' hooks move plain "
                "and torchao tensors only); use musubi_blocks_to_swap with a quanto base, or fp8-torchao"
            )
        if self.compile_transformer and self.base_model_precision == "int4-quanto":
            raise ValueError(
                "compile_transformer cannot compile an 'int4-quanto' base: torch.compile fails on quanto's int4 (tinygemm) "
                "weights (seen with torch 2.11, optimum-quanto 0.2.7); leave compile_transformer unset (int4 runs eager) "
                "or use 'int8-quanto'/'fp8-torchao'"
            )
        if self.fp8_compute and self.model_type == "full":
            raise ValueError(
                "fp8_compute runs the frozen base layers in float8; model_type 'full' trains every weight (a float8 "
                "weight gradient is not supported); use model_type 'lora' with fp8_compute, or drop fp8_compute"
            )
        if self.fp8_compute and self.base_model_precision in ("int8-quanto", "int4-quanto", "fp8-torchao"):
            instead = (
                "drop fp8_compute (fp8-torchao keeps float8 weights for memory, computing in bf16) or use base_model_precision "
                "'bf16' with fp8_compute for float8 speed"
                if self.base_model_precision == "fp8-torchao"
                else "use base_model_precision 'bf16' (or 'no_change') with fp8_compute for float8 speed, or "
                f"'{self.base_model_precision}' without fp8_compute for memory"
            )
            raise ValueError(
                f"fp8_compute cannot run with base_model_precision {self.base_model_precision!r}: float8 matmuls take "
                f"high-precision base weights and cast them themselves; {instead}"
            )
        if self.validation_distill_lora and info.defaults.distill_steps is None:
            raise ValueError(
                f"validation_distill_lora: {info.display_name or info.name} has no distilled sampling mode; remove it"
            )
        moves_weights = [key for key, used in (("enable_group_offload", self.enable_group_offload), ("musubi_blocks_to_swap", self.musubi_blocks_to_swap)) if used]
        if moves_weights and self.model_type == "full":
            raise ValueError(
                f"{moves_weights[0]} moves frozen base weights, but model_type 'full' trains them all; "
                "use model_type 'lora', or gradient_checkpointing_cpu_offload to save memory in full fine-tuning"
            )
        needs_checkpointing = moves_weights + (["gradient_checkpointing_cpu_offload"] if self.gradient_checkpointing_cpu_offload else [])
        if needs_checkpointing and not self.gradient_checkpointing:
            raise ValueError(f"{needs_checkpointing[0]} needs gradient_checkpointing: true (it relies on blocks being recomputed in the backward)")
        if self.num_processes > 1 and self.distributed.strategy == "fsdp" and self.optimizer == "adamw8bit":
            raise ValueError(
                "optimizer 'adamw8bit' cannot step FSDP-sharded weights; use optimizer 'adamw' "
                "(optimizer_state_dtype 'bf16' halves its memory for full fine-tuning) or distributed.strategy 'ddp'"
            )
        if self.validation_continuation == CONTINUE_EVAL_DATASET and not self.eval_dataset_id:
            raise ValueError("validation_continuation 'eval_dataset' continues the clips of eval_dataset_id, which is not set; name the dataset id")
        if (self.validation_continuation or self.validation_segments) and info.continuation is None:
            raise ValueError(
                f"validation_continuation / validation_segments: {info.display_name or info.name} cannot continue videos "
                "(no clean-frame conditioning); remove them"
            )
        if self.validation_continuation or self.validation_segments:
            try:
                check_frame_count(self.validation_cond_frames, self.model_family)
            except ValueError as error:
                raise ValueError(f"validation_cond_frames: {error}") from None
            if self.validation_cond_frames >= self.validation_num_video_frames:
                raise ValueError(
                    f"validation_cond_frames {self.validation_cond_frames} leaves no frame to generate in "
                    f"{self.validation_num_video_frames}-frame validation videos; lower it or raise validation_num_video_frames"
                )
        if self.validation_using_datasets and not self.eval_dataset_id:
            raise ValueError("validation_using_datasets is true but eval_dataset_id is not set; name the dataset id to validate with")
        problem = image_only_validation_message(self) if info.flavours[self.model_flavour].image_conditioned else None
        if problem:
            # The trainer's check of the checkpoint (training.pipeline.check_validation_setup) says the
            # same; here so `config check` and the web UI's Check say it too.
            raise ValueError(problem)
        return self

    @model_serializer(mode="wrap")
    def _family_defaults_as_null(self, handler):
        """A key holding its family's default is written as null ("the family's"), so a saved
        config stays right for another family and reads back to the same values."""
        data = handler(self)
        if isinstance(data, dict):
            info = registry.family_info(self.model_family)
            for key, default in FAMILY_DEFAULTS.items():
                if key in data and getattr(self, key) == default(info):
                    data[key] = None
        return data

    # ------------------------------------------------------------------ derived
    @property
    def effective_lora_alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)

    @property
    def validation_size(self) -> tuple[int, int]:
        return parse_resolution(self.validation_resolution, self.model_family)

    def group_of(self, key: str) -> str:
        return field_group(key)


def field_group(key: str) -> str:
    extra = TrainConfig.model_fields[key].json_schema_extra or {}
    return extra.get("group", "other")  # type: ignore[union-attr]


# Settings that parse but whose feature has not landed yet: each predicate says when a
# config uses one, which prints a loud warning (never silently ignored). Shrinks as
# features land.
NOT_YET_IMPLEMENTED: dict[str, tuple[Any, str]] = {
}


def unimplemented_settings(config: TrainConfig) -> list[str]:
    """One warning line per setting this build accepts but does not carry out yet."""
    return [
        f"'{key}' = {getattr(config, key)!r}: {feature} is NOT IMPLEMENTED in this version of frametuner; the setting has no effect"
        for key, (used, feature) in NOT_YET_IMPLEMENTED.items()
        if used(config)
    ]
