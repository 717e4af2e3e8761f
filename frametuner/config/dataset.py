"""The dataset list (``data_backend_config``): one entry per folder of clips or images.

SimpleTuner-style keys, validated like the main config: every problem is one line
naming the file, the dataset id and the key. Frame-count rules (4k+1 for LongCat) come
from the model spec's temporal stride, never from a hard-coded family. No torch here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import ConfigError, did_you_mean, format_pydantic_errors
from .jsonc import load_jsonc
from .schema import TrainConfig

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Same-stem images that condition an image-to-video clip (issue 4 point 4).
CONDITIONING_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


class VideoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_frames: int = Field(
        93, ge=1, description="Frames per sample (aspect_ratio); the longest sample (resolution_frames). Must satisfy the model's frame rule (4k+1)"
    )
    min_frames: int | None = Field(
        None, ge=1, description="Skip clips with fewer usable frames; shorter clips above it are trimmed to the largest valid count. Default: num_frames (aspect_ratio), frame_interval+1 (resolution_frames)"
    )
    max_frames: int | None = Field(None, ge=1, description="Skip clips with more usable frames than this (null = keep them, a window of num_frames is taken)")
    bucket_strategy: Literal["aspect_ratio", "resolution_frames"] = Field(
        "aspect_ratio", description="aspect_ratio: buckets by size, every sample num_frames long; resolution_frames: buckets HxW@F with F each clip's own length on the frame_interval grid"
    )
    frame_interval: int = Field(4, ge=1, description="resolution_frames: frame counts are rounded down to 1 + a multiple of this (a multiple of the model's temporal stride)")
    fps: float | None = Field(None, gt=0, description="Resample clips to this frame rate by selecting frames (null = the clip's own frames)")
    start_time: float = Field(0.0, ge=0, description="Seconds skipped at the start of every clip (intros, fades)")
    window: Literal["start", "center", "random"] = Field(
        "start", description="Which num_frames window of a longer clip is used; random is seeded per file (stable across runs)"
    )


class DatasetConfig(BaseModel):
    """One entry of the dataset list."""

    model_config = ConfigDict(extra="forbid")
    _root: Path | None = PrivateAttr(default=None)  # instance_data_dir, resolved
    _manifest_path: Path | None = PrivateAttr(default=None)
    _conditioning_root: Path | None = PrivateAttr(default=None)
    _source: str = PrivateAttr(default="")  # the dataset file, for messages

    id: str = Field(..., min_length=1, description="Unique name of the dataset (logs, cache keys, eval_dataset_id)")
    type: Literal["local"] = Field("local", description="Storage backend; only local folders for now")
    instance_data_dir: str = Field(..., description="Folder of clips/images, relative to the dataset file's folder")
    dataset_type: Literal["video", "image"] = Field("video", description="video: clips; image: stills trained as 1-frame clips")
    caption_strategy: Literal["textfile", "filename", "jsonl", "csv"] = Field(
        "textfile", description="textfile: clip.mp4 + clip.txt; filename: the file name; jsonl/csv: a manifest with path and caption columns"
    )
    manifest: str | None = Field(None, description="jsonl/csv manifest (relative to the dataset file's folder); default <instance_data_dir>/metadata.jsonl|csv")
    path_column: str = Field("file_name", description="Manifest column with the media path (relative to instance_data_dir)")
    caption_column: str = Field("caption", description="Manifest column with the caption")
    resolution: int | str = Field(
        "480x832", description="pixel_area: an edge (area = edge^2) or 'HxW' (area = H*W); pixel: the shorter edge"
    )
    resolution_type: Literal["pixel_area", "pixel"] = Field("pixel_area", description="How resolution is read")
    crop: Literal["center", "random", "none"] = Field(
        "center", description="Fill the bucket keeping the aspect, then crop (center, or random seeded per file); none: stretch to the bucket"
    )
    repeats: int = Field(0, ge=0, description="Extra times each sample is seen per epoch (0 = once)")
    probability: float = Field(1.0, gt=0.0, le=1.0, description="Fraction of this dataset's batches used per epoch (a fresh random subset each epoch)")
    is_i2v: bool = Field(False, description="Image-to-video: every clip is conditioned on an image (same-stem file, else its first frame)")
    conditioning_image: Literal["auto", "first_frame", "required"] = Field(
        "auto", description="i2v: auto = same-stem image if present, else the first frame; first_frame = always; required = skip clips without an image"
    )
    conditioning_data: str | None = Field(None, description="i2v: folder of same-stem conditioning images (same sub-folders); default beside each clip")
    split: Literal["train", "eval"] = Field("train", description="eval: used only for validation prompts/images (see eval_dataset_id), never trained on")
    disabled: bool = Field(False, description="Leave this dataset out entirely")
    video: VideoOptions = Field(default_factory=VideoOptions, description="Frame options (video datasets)")

    @model_validator(mode="after")
    def _checks(self) -> "DatasetConfig":
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.id):
            raise ValueError(f"id {self.id!r} may use only letters, digits, '.', '_' and '-' (it names cache folders)")
        self.target_area()  # raises on a bad resolution
        if self.dataset_type == "image":
            if self.is_i2v:
                raise ValueError("is_i2v needs dataset_type 'video' (an image dataset has no clip to condition)")
            if "video" in self.model_fields_set:
                raise ValueError("the 'video' section applies to dataset_type 'video' only; remove it")
        if self.caption_strategy not in ("jsonl", "csv") and self.manifest is not None:
            raise ValueError(f"'manifest' is only read with caption_strategy jsonl or csv (this one is {self.caption_strategy!r})")
        video = self.video
        if video.min_frames is not None and video.min_frames > video.num_frames:
            raise ValueError(f"video.min_frames {video.min_frames} is above video.num_frames {video.num_frames}; lower it")
        if video.max_frames is not None and video.max_frames < self.min_frames:
            raise ValueError(f"video.max_frames {video.max_frames} is below video.min_frames {self.min_frames}; raise it")
        return self

    # ---------------------------------------------------------------- derived
    def target_area(self) -> int | None:
        """Pixel area of buckets (pixel_area), or None (pixel: ``shorter_edge``)."""
        value = self.resolution
        if self.resolution_type == "pixel":
            if isinstance(value, str):
                raise ValueError(f"resolution {value!r}: resolution_type 'pixel' takes the shorter edge as a number, e.g. 480")
            if value < 16:
                raise ValueError(f"resolution {value} is below 16 pixels")
            return None
        if isinstance(value, int):
            if value < 16:
                raise ValueError(f"resolution {value} is below 16 pixels")
            return value * value
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", value)
        if not match:
            raise ValueError(f"resolution {value!r} is not a number or 'HxW' (for example 480 or '480x832')")
        height, width = int(match.group(1)), int(match.group(2) or match.group(1))
        if min(height, width) < 16:
            raise ValueError(f"resolution {value!r} is below 16 pixels")
        return height * width

    @property
    def shorter_edge(self) -> int | None:
        return self.resolution if self.resolution_type == "pixel" else None  # type: ignore[return-value]

    @property
    def min_frames(self) -> int:
        """``video.min_frames`` with its strategy-dependent default."""
        video = self.video
        if self.dataset_type == "image":
            return 1
        if video.min_frames is not None:
            return video.min_frames
        if video.bucket_strategy == "resolution_frames":
            return video.frame_interval + 1
        return video.num_frames

    @property
    def root(self) -> Path:
        assert self._root is not None, "load the dataset list with load_dataset_configs()"
        return self._root

    @property
    def manifest_path(self) -> Path | None:
        return self._manifest_path

    @property
    def conditioning_root(self) -> Path | None:
        return self._conditioning_root

    @property
    def source(self) -> str:
        return self._source

    @property
    def trains(self) -> bool:
        return self.split == "train" and not self.disabled


def _check_frame_rules(dataset: DatasetConfig, stride: int) -> list[str]:
    """Frame counts the VAE can pack: ``1 + stride * k`` (LongCat: 4k+1)."""
    if dataset.dataset_type != "video":
        return []
    video = dataset.video
    where = f"{dataset.source}: dataset '{dataset.id}'"
    problems = []

    def valid(frames: int) -> bool:
        return frames >= 1 and (frames - 1) % stride == 0

    if not valid(video.num_frames):
        lower = video.num_frames - (video.num_frames - 1) % stride
        problems.append(
            f"{where}: 'video.num_frames': {video.num_frames} frames is not {stride}k+1 (the VAE packs the first frame alone, "
            f"then groups of {stride}); use {lower} or {lower + stride}"
        )
    if video.frame_interval % stride:
        problems.append(
            f"{where}: 'video.frame_interval': {video.frame_interval} is not a multiple of the model's temporal stride {stride}; "
            f"use {max(stride, video.frame_interval - video.frame_interval % stride)}"
        )
    return problems


def load_dataset_configs(config: TrainConfig, frame_stride: int | None = None) -> list[DatasetConfig]:
    """Read and validate ``config.data_backend_config``; returns the enabled datasets.

    ``frame_stride`` is the model's temporal VAE stride (frames are ``1 + stride*k``);
    None asks the family's spec. Paths are resolved here so later code never guesses.
    """
    from .loader import resolve_input_path

    if not config.data_backend_config:
        raise ConfigError(["'data_backend_config' is not set; point it at a JSON list of datasets (see docs/datasets.md)"])
    path = resolve_input_path(config, config.data_backend_config)
    assert path is not None
    if not path.exists():
        raise ConfigError([f"'data_backend_config': {path} not found; check the path (relative paths start at the config file's folder)"])
    entries = load_jsonc(path)
    if not isinstance(entries, list) or not entries:
        raise ConfigError([f"{path}: expected a non-empty JSON list of datasets [{{\"id\": ..., \"instance_data_dir\": ...}}, ...]"])
    if frame_stride is None:
        from ..models.registry import load_spec

        frame_stride = int(load_spec(config.model_family).geometry.vae_stride[0])

    problems: list[str] = []
    datasets: list[DatasetConfig] = []
    seen: set[str] = set()
    for number, entry in enumerate(entries, start=1):
        label = f"dataset '{entry.get('id')}'" if isinstance(entry, dict) and entry.get("id") else f"dataset #{number}"
        if not isinstance(entry, dict):
            problems.append(f"{path}: {label}: each dataset is a JSON object {{...}}, got {type(entry).__name__}")
            continue
        try:
            dataset = DatasetConfig.model_validate(entry)
        except ValidationError as error:
            known = list(DatasetConfig.model_fields) + list(VideoOptions.model_fields)
            lines = format_pydantic_errors(error, f"{path}: {label}", known)
            problems += [line.replace(": '(top level)':", ":") for line in lines]  # cross-key checks name their keys
            continue
        dataset._source = str(path)
        if dataset.id in seen:
            problems.append(f"{path}: {label}: 'id': {dataset.id!r} is used by two datasets; ids must be unique")
            continue
        seen.add(dataset.id)
        problems += _check_frame_rules(dataset, frame_stride)
        base = path.parent
        dataset._root = (base / Path(dataset.instance_data_dir).expanduser()).resolve()
        if not dataset.disabled and not dataset._root.is_dir():
            problems.append(f"{path}: {label}: 'instance_data_dir': {dataset._root} is not a folder; fix the path (relative to {base})")
        if dataset.caption_strategy in ("jsonl", "csv"):
            manifest = dataset.manifest
            dataset._manifest_path = (
                (base / Path(manifest).expanduser()).resolve() if manifest else dataset._root / f"metadata.{dataset.caption_strategy}"
            )
            if not dataset.disabled and not dataset._manifest_path.is_file():
                problems.append(f"{path}: {label}: 'manifest': {dataset._manifest_path} not found; set 'manifest' to your {dataset.caption_strategy} file")
        if dataset.conditioning_data:
            dataset._conditioning_root = (base / Path(dataset.conditioning_data).expanduser()).resolve()
            if not dataset.disabled and not dataset._conditioning_root.is_dir():
                problems.append(f"{path}: {label}: 'conditioning_data': {dataset._conditioning_root} is not a folder")
        datasets.append(dataset)
    if problems:
        raise ConfigError(problems)

    enabled = [d for d in datasets if not d.disabled]
    ids = [d.id for d in enabled]
    if config.eval_dataset_id is not None and config.eval_dataset_id not in ids:
        raise ConfigError(
            [f"'eval_dataset_id': {config.eval_dataset_id!r} is not an enabled dataset in {path}{did_you_mean(config.eval_dataset_id, ids)}; ids: {', '.join(ids)}"]
        )
    if not any(d.trains for d in enabled):
        raise ConfigError([f"{path}: no dataset to train on (every one is disabled or split 'eval'); enable one"])
    return enabled
