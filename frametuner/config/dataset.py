"""The dataset list (``data_backend_config``): one entry per folder of clips or images.

SimpleTuner-style keys, validated like the main config: every problem is one line
naming the file, the dataset id and the key. Frame-count rules and the default frame
count come from the model family's registry entry, never from a hard-coded family. No torch here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator, ValidationInfo

from .conditioning import ConditioningMix, dataset_mix, dataset_problems
from .errors import ConfigError, did_you_mean
from .jsonc import strip_jsonc
from .schema import PATH_INPUT, TrainConfig

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Same-stem images that condition an image-to-video clip (issue 4 point 4).
CONDITIONING_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


class VideoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_frames: int | None = Field(
        None, ge=1, description="Frames per sample (aspect_ratio); the longest sample (resolution_frames). Must satisfy the model's frame rule (4k+1); null = the family's default"
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
    _mix: ConditioningMix | None = PrivateAttr(default=None)  # the mix it trains with (set by the loader)

    id: str = Field(..., min_length=1, description="Unique name of the dataset (logs, cache keys, eval_dataset_id)")
    type: Literal["local"] = Field("local", description="Storage backend; only local folders for now")
    instance_data_dir: str = Field(
        ..., description="Folder of clips/images, relative to the dataset file's folder", json_schema_extra={"path": PATH_INPUT}
    )
    dataset_type: Literal["video", "image"] = Field("video", description="video: clips; image: stills trained as 1-frame clips")
    caption_strategy: Literal["textfile", "filename", "jsonl", "csv"] = Field(
        "textfile", description="textfile: clip.mp4 + clip.txt; filename: the file name; jsonl/csv: a manifest with path and caption columns"
    )
    manifest: str | None = Field(
        None,
        description="jsonl/csv manifest (relative to the dataset file's folder); default <instance_data_dir>/metadata.jsonl|csv",
        json_schema_extra={"path": PATH_INPUT},
    )
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
    conditioning_data: str | None = Field(
        None,
        description="i2v: folder of same-stem conditioning images (same sub-folders); default beside each clip",
        json_schema_extra={"path": PATH_INPUT},
    )
    conditioning: ConditioningMix | None = Field(
        None, description="Conditioning mix of this dataset's samples, e.g. {\"t2v\": 0.5, \"i2v\": 0.2, \"vc\": 0.3, \"vc_cond_frames\": [13]}; null = the config's 'conditioning' (is_i2v datasets: image-to-video only). See docs/conditioning.md"
    )
    split: Literal["train", "eval"] = Field("train", description="eval: used only for validation prompts/images (see eval_dataset_id), never trained on")
    disabled: bool = Field(False, description="Leave this dataset out entirely")
    video: VideoOptions = Field(default_factory=VideoOptions, description="Frame options (video datasets)")

    @model_validator(mode="after")
    def _checks(self, info: ValidationInfo) -> "DatasetConfig":
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
        if video.num_frames is None:  # the family's default length (validation context "model_family", else the default family)
            from ..models.registry import family_info
            from .schema import DEFAULT_MODEL_FAMILY

            family = (info.context or {}).get("model_family", DEFAULT_MODEL_FAMILY)
            object.__setattr__(video, "num_frames", family_info(family).defaults.frames)
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
    def conditioning_mix(self) -> ConditioningMix:
        """The conditioning mix this dataset trains with (its own, else the config's; see :func:`dataset_mix`)."""
        return self._mix if self._mix is not None else (self.conditioning or ConditioningMix.only("i2v" if self.is_i2v else "t2v"))

    @property
    def trains(self) -> bool:
        return self.split == "train" and not self.disabled


@dataclass(frozen=True)
class DatasetProblem:
    """One problem with the dataset list: where it is, what is wrong, how to fix it.

    ``field`` is the top-level config key it belongs to (``data_backend_config`` or
    ``eval_dataset_id``), so a form can put it beside that field; ``file``/``line`` point
    at the dataset list (or the config) where the offending key is written; ``key`` is
    the key inside a dataset entry (``video.num_frames``), None for the list as a whole.
    """

    field: str
    message: str
    fix: str
    file: str | None = None
    line: int | None = None
    dataset: str | None = None  # "dataset 'clips'" or "dataset #2"
    key: str | None = None

    def __str__(self) -> str:
        where = self.file or ""
        if where and self.line is not None:
            where = f"{where}:{self.line}"
        parts = [part for part in (where, self.dataset) if part]
        if self.key is not None and not self.message.startswith(self.key):  # cross-key messages start with their key
            parts.append(f"'{self.key}'")
        elif self.key is None and self.dataset is None:
            parts.append(f"'{self.field}'")
        text = ": ".join(parts) + f": {self.message}"
        return f"{text}; {self.fix}" if self.fix else text


def _key_lines(text: str) -> dict[tuple, int]:
    """1-based line of every key (and list item) of a JSONC document, by path.

    ``(0,)`` is the first list item, ``(0, "video", "num_frames")`` a nested key. Best
    effort: a document json cannot read returns what was found before the problem.
    """
    from .jsonc import strip_jsonc

    try:
        src = strip_jsonc(text)
    except ValueError:
        return {}
    lines: dict[tuple, int] = {}
    pos = 0
    n = len(src)

    def line_at(i: int) -> int:
        return src.count("\n", 0, i) + 1

    def skip() -> None:
        nonlocal pos
        while pos < n and src[pos] in " \t\r\n":
            pos += 1

    def string() -> str:
        nonlocal pos
        end = pos + 1
        while end < n and src[end] != '"':
            end += 2 if src[end] == "\\" else 1
        raw = src[pos : end + 1]
        pos = end + 1
        try:
            return json.loads(raw)
        except ValueError:
            return raw.strip('"')

    def value(path: tuple) -> None:
        nonlocal pos
        skip()
        if pos >= n:
            return
        ch = src[pos]
        if ch == "{":
            pos += 1
            while True:
                skip()
                if pos >= n or src[pos] == "}":
                    pos += 1
                    return
                if src[pos] == ",":
                    pos += 1
                    continue
                if src[pos] != '"':
                    raise ValueError
                at = pos
                key = string()
                lines[path + (key,)] = line_at(at)
                skip()
                if pos < n and src[pos] == ":":
                    pos += 1
                value(path + (key,))
        elif ch == "[":
            pos += 1
            index = 0
            while True:
                skip()
                if pos >= n or src[pos] == "]":
                    pos += 1
                    return
                if src[pos] == ",":
                    pos += 1
                    continue
                lines[path + (index,)] = line_at(pos)
                value(path + (index,))
                index += 1
        elif ch == '"':
            string()
        else:
            while pos < n and src[pos] not in ",]}":
                pos += 1

    try:
        value(())
    except (ValueError, IndexError, RecursionError):
        pass
    return lines


def _check_frame_rules(dataset: DatasetConfig, stride: int) -> list[tuple[str, str, str]]:
    """Frame counts the VAE can pack: ``1 + stride * k`` (the family's stride). (key, message, fix) triples."""
    if dataset.dataset_type != "video":
        return []
    video = dataset.video
    problems = []

    from ..models.spec import frame_count_problem

    problem = frame_count_problem(video.num_frames, stride)
    if problem is not None:
        problems.append(("video.num_frames", *problem))
    if video.frame_interval % stride:
        problems.append(
            (
                "video.frame_interval",
                f"{video.frame_interval} is not a multiple of the model's temporal stride {stride}",
                f"use {max(stride, video.frame_interval - video.frame_interval % stride)}",
            )
        )
    return problems


def _split_fix(message: str) -> tuple[str, str]:
    """'what is wrong; what to do' -> (what is wrong, what to do)."""
    head, sep, tail = message.partition("; ")
    return (head, tail) if sep else (message, "")


def _pydantic_problems(error: ValidationError) -> list[tuple[str | None, str, str]]:
    """(key, message, fix) for each error of one dataset entry."""
    known = list(DatasetConfig.model_fields) + list(VideoOptions.model_fields)
    out: list[tuple[str | None, str, str]] = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item["loc"]]
        key = ".".join(loc) if loc else None
        kind, value = item["type"], item.get("input")
        if kind == "extra_forbidden":
            hint = did_you_mean(loc[-1], known).removeprefix("; ")
            out.append((key, "unknown key" + (f"; {hint}" if hint else ""), "remove it or fix the spelling"))
        elif kind == "missing":
            out.append((key, "required key is missing", "add it"))
        elif kind in ("value_error", "assertion_error"):
            message = str(item["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            if key is None:  # a cross-key check: its message starts with the key it is about
                first = re.split(r"[\s:]", message, maxsplit=1)[0]
                key = first if first.split(".")[0] in known else None
            out.append((key, *_split_fix(message)))
        elif kind == "literal_error":
            expected = item.get("ctx", {}).get("expected", "")
            out.append((key, f"{value!r} is not allowed", f"use one of {expected}"))
        else:
            out.append((key, f"{item['msg'].lower()}, got {value!r}", "fix the value"))
    return out


def _read_dataset_list(config: TrainConfig, frame_stride: int | None) -> tuple[list[DatasetConfig], list[DatasetProblem]]:
    """Every dataset entry that validated, and every problem found (the one validator's work)."""
    from .loader import resolve_input_path

    config_file = getattr(config, "_config_file", None)
    field = "data_backend_config"
    if not config.data_backend_config:
        return [], [
            DatasetProblem(
                field,
                "is not set",
                "point it at a JSON list of datasets, e.g. \"data_backend_config\": \"datasets.json\" (see docs/datasets.md)",
                file=config_file,
            )
        ]
    path = resolve_input_path(config, config.data_backend_config)
    assert path is not None
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        return [], [
            DatasetProblem(
                field,
                f"{path} {what}",
                "check the path (relative paths start at the config file's folder)",
                file=config_file,
            )
        ]
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return [], [DatasetProblem(field, "not UTF-8 text", "save the file as UTF-8", file=source)]
    except OSError as error:
        return [], [DatasetProblem(field, f"cannot be read ({error.strerror})", "check its permissions", file=source)]
    try:
        entries = json.loads(strip_jsonc(text))
    except json.JSONDecodeError as error:
        return [], [DatasetProblem(field, f"not valid JSON: {error.msg} (column {error.colno})", "fix the syntax there", file=source, line=error.lineno)]
    except ValueError as error:
        return [], [DatasetProblem(field, f"not valid JSON: {error}", "fix the syntax", file=source)]
    if not isinstance(entries, list) or not entries:
        return [], [
            DatasetProblem(
                field,
                "expected a non-empty JSON list of datasets",
                'write [{"id": "clips", "instance_data_dir": "clips"}, ...]',
                file=source,
                line=1,
            )
        ]
    if frame_stride is None:
        from ..models.registry import family_info

        frame_stride = family_info(config.model_family).frame_stride
    lines = _key_lines(text)

    def line_of(number: int, key: str | None) -> int | None:
        path: tuple = (number - 1,)
        best = lines.get(path)
        for part in (key or "").split(".") if key else ():
            path = path + (part,)
            best = lines.get(path, best)
        return best

    problems: list[DatasetProblem] = []
    datasets: list[DatasetConfig] = []
    seen: set[str] = set()
    base = path.parent

    def problem(number: int, label: str, key: str | None, message: str, fix: str) -> None:
        problems.append(DatasetProblem(field, message, fix, file=source, line=line_of(number, key), dataset=label, key=key))

    for number, entry in enumerate(entries, start=1):
        label = f"dataset '{entry.get('id')}'" if isinstance(entry, dict) and entry.get("id") else f"dataset #{number}"
        if not isinstance(entry, dict):
            problem(number, label, None, f"each dataset is a JSON object {{...}}, got {type(entry).__name__}", 'write {"id": ..., "instance_data_dir": ...}')
            continue
        try:
            dataset = DatasetConfig.model_validate(entry, context={"model_family": config.model_family})
        except ValidationError as error:
            for key, message, fix in _pydantic_problems(error):
                problem(number, label, key, message, fix)
            continue
        dataset._source = source
        if dataset.id in seen:
            problem(number, label, "id", f"{dataset.id!r} is used by two datasets", "ids must be unique; rename one")
            continue
        seen.add(dataset.id)
        for key, message, fix in _check_frame_rules(dataset, frame_stride):
            problem(number, label, key, message, fix)
        dataset._mix = dataset_mix(dataset, config)
        for where, key, message, fix in dataset_problems(dataset, config, frame_stride):
            if where == "data_backend_config":
                problem(number, label, key, message, fix)
            else:  # the config's default mix does not fit this dataset
                problems.append(DatasetProblem(where, message, fix, file=getattr(config, "_config_file", None)))
        dataset._root = (base / Path(dataset.instance_data_dir).expanduser()).resolve()
        if not dataset.disabled and not dataset._root.is_dir():
            what = "is a file, not a folder" if dataset._root.exists() else "does not exist"
            problem(number, label, "instance_data_dir", f"{dataset._root} {what}", f"fix the path (relative to {base}) or create the folder")
        if dataset.caption_strategy in ("jsonl", "csv"):
            manifest = dataset.manifest
            dataset._manifest_path = (
                (base / Path(manifest).expanduser()).resolve() if manifest else dataset._root / f"metadata.{dataset.caption_strategy}"
            )
            if not dataset.disabled and not dataset._manifest_path.is_file():
                problem(number, label, "manifest", f"{dataset._manifest_path} not found", f"set 'manifest' to your {dataset.caption_strategy} file")
        if dataset.conditioning_data:
            dataset._conditioning_root = (base / Path(dataset.conditioning_data).expanduser()).resolve()
            if not dataset.disabled and not dataset._conditioning_root.is_dir():
                problem(number, label, "conditioning_data", f"{dataset._conditioning_root} is not a folder", "fix the path (relative to the dataset file's folder)")
        datasets.append(dataset)
    if problems:
        return datasets, problems

    enabled = [d for d in datasets if not d.disabled]
    ids = [d.id for d in enabled]
    if config.eval_dataset_id is not None and config.eval_dataset_id not in ids:
        problems.append(
            DatasetProblem(
                "eval_dataset_id",
                f"{config.eval_dataset_id!r} is not an enabled dataset in {path}{did_you_mean(config.eval_dataset_id, ids)}",
                f"use one of: {', '.join(ids)}",
                file=config_file,
            )
        )
    if not any(d.trains for d in enabled):
        problems.append(
            DatasetProblem(field, "no dataset to train on (every one is disabled or split 'eval')", "enable one", file=source)
        )
    return enabled, problems


def validate_dataset_list(config: TrainConfig, frame_stride: int | None = None) -> list[DatasetProblem]:
    """THE dataset validator: every problem with ``config.data_backend_config``, empty when fine.

    Used by ``frametuner config check``, the web UI's Check and ``train`` (through
    :func:`load_dataset_configs`). Never raises for a user mistake; each problem names
    the file, line, dataset and key, and says how to fix it. ``frame_stride`` is the
    model's temporal VAE stride; None asks the family's spec.
    """
    return _read_dataset_list(config, frame_stride)[1]


def load_dataset_configs(config: TrainConfig, frame_stride: int | None = None) -> list[DatasetConfig]:
    """Read and validate ``config.data_backend_config``; returns the enabled datasets.

    Raises :class:`ConfigError` with one line per :class:`DatasetProblem` (the checks of
    :func:`validate_dataset_list`). Paths are resolved here so later code never guesses.
    """
    datasets, problems = _read_dataset_list(config, frame_stride)
    if problems:
        raise ConfigError([str(p) for p in problems])
    return datasets
