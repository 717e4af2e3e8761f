"""Scan the configured datasets: files -> probed, captioned, bucketed ``Sample`` records.

Bad input never stops a scan: each unusable file is skipped with a one-line warning
(file + reason) and counted in a summary table; only a dataset left with nothing is an
error, raised here, before any model is loaded.
"""

from __future__ import annotations

import logging
import os
import random
from array import array
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..config.dataset import CONDITIONING_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, DatasetConfig, load_dataset_configs
from ..config.errors import ConfigError
from ..config.schema import TrainConfig
from .buckets import MAX_CROPPED, MAX_UPSCALE, bucket_size, crop_box, cropped_share, frames_on_interval, largest_valid_frames, upscale_factor, window_start
from .captions import CaptionError, caption_from_filename, read_caption_file, read_manifest
from .media import DecodeError, probe_image, probe_video, select_frames
from .sample import Bucket, Sample, SourceInfo

log = logging.getLogger("frametuner.data")


@dataclass(frozen=True)
class SkippedFile:
    dataset_id: str
    path: Path
    reason: str  # short code: the rows of the summary table
    detail: str = ""

    def line(self) -> str:
        return f"skipped {self.path}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class DatasetScan:
    config: DatasetConfig
    samples: list[Sample] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def total_frames(self) -> int:
        return sum(sample.bucket.frames for sample in self.samples)


class EmptyDatasetError(ConfigError):
    """A dataset with no usable sample: raised by the scan, before any GPU work."""


@dataclass
class ScanResult:
    """Samples per dataset, skipped files with reasons, and summaries for tables."""

    datasets: dict[str, DatasetScan]
    frame_stride: int = 4
    alignment: int = 16  # aspect_bucket_alignment: the pixel grid of bucket sizes

    @property
    def samples(self) -> list[Sample]:
        """Training samples (datasets with split 'train'), dataset by dataset."""
        return [s for scan in self.datasets.values() if scan.config.trains for s in scan.samples]

    @property
    def all_samples(self) -> list[Sample]:
        return [s for scan in self.datasets.values() for s in scan.samples]

    def dataset_samples(self, dataset_id: str) -> list[Sample]:
        """Samples of one dataset (e.g. ``eval_dataset_id`` for validation prompts and images)."""
        return self.datasets[dataset_id].samples

    @property
    def skipped(self) -> list[SkippedFile]:
        return [s for scan in self.datasets.values() for s in scan.skipped]

    def skip_counts(self) -> Counter[tuple[str, str]]:
        """(dataset id, reason) -> files skipped."""
        return Counter((s.dataset_id, s.reason) for s in self.skipped)

    @property
    def total_frames(self) -> int:
        return sum(scan.total_frames for scan in self.datasets.values())

    def warnings(self) -> list[str]:
        """What trains but deserves a look: a source enlarged more than ``MAX_UPSCALE`` times to its
        bucket (one line per file), a bucket that crops away more than ``MAX_CROPPED`` of its
        sources (one line per dataset and bucket)."""
        lines = []
        for scan in self.datasets.values():
            config = scan.config
            cropped: dict[str, list[tuple[float, Sample]]] = {}
            for sample in scan.samples:
                source, bucket = sample.source, sample.bucket
                scale = upscale_factor(source.height, source.width, sample.crop)
                if scale > MAX_UPSCALE:
                    lines.append(
                        f"{source.path}: {source.height}x{source.width} is upscaled {scale:.3g}x to its bucket "
                        f"{bucket.height}x{bucket.width} (more than {MAX_UPSCALE:g}x: it trains as a blur); use a larger source or a smaller resolution"
                    )
                share = cropped_share(sample.crop)
                if share > MAX_CROPPED:
                    cropped.setdefault(bucket.key, []).append((share, sample))
            for key, items in cropped.items():
                worst, sample = max(items, key=lambda item: item[0])
                bucket, source = sample.bucket, sample.source
                lines.append(
                    f"dataset '{config.id}': bucket {key} ({_ratio(bucket.width, bucket.height)}) crops away "
                    f"up to {worst:.0%} of each frame of {len(items)} file(s), e.g. {source.path.name} ({source.height}x{source.width}, "
                    f"{_ratio(source.width, source.height)}): resolution {config.resolution!r} on the {self.alignment}-pixel grid gives this bucket; "
                    "set a resolution closer to the clips' aspect ratio (or one number, an area), a smaller aspect_bucket_alignment, or crop 'none' to stretch"
                )
        return lines

    def empty_dataset_messages(self) -> list[str]:
        lines = []
        for scan in self.datasets.values():
            if scan.samples:
                continue
            where = f"{scan.config.source}: dataset '{scan.config.id}' ({scan.config.root})"
            if not scan.skipped:
                kinds = VIDEO_EXTENSIONS if scan.config.dataset_type == "video" else IMAGE_EXTENSIONS
                lines.append(f"{where}: no {scan.config.dataset_type} files found (looked for {', '.join(kinds)}); check instance_data_dir")
            else:
                reasons = Counter(s.reason for s in scan.skipped).most_common()
                summary = ", ".join(f"{reason}: {count}" for reason, count in reasons)
                lines.append(f"{where}: no usable samples, all {len(scan.skipped)} files were skipped ({summary}); see the warnings above")
        return lines


def _ratio(width: int, height: int) -> str:
    return f"{width / height:.2f}:1" if width >= height else f"1:{height / width:.2f}"


# ------------------------------------------------------------------ candidates
@dataclass(frozen=True)
class _Candidate:
    path: Path
    relative: str  # to instance_data_dir: seeds, conditioning look-up, messages
    caption: str | None = None  # from a manifest
    problem: SkippedFile | None = None  # a manifest row that is unusable


def _walk(root: Path, extensions: Iterable[str]) -> list[Path]:
    """Files under ``root`` with these extensions, sorted, hidden files and folders left out."""
    wanted = tuple(extensions)
    found = []
    visited: set[str] = set()  # linked folders are followed, each real folder once (no loops)
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            subfolders[:] = []
            continue
        visited.add(real)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [Path(folder) / f for f in files if not f.startswith(".") and f.lower().endswith(wanted)]
    return sorted(found)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _candidates(dataset: DatasetConfig) -> list[_Candidate]:
    root = dataset.root
    if dataset.caption_strategy in ("textfile", "filename"):
        kinds = VIDEO_EXTENSIONS if dataset.dataset_type == "video" else IMAGE_EXTENSIONS
        return [_Candidate(path, _relative(path, root)) for path in _walk(root, kinds)]
    manifest = dataset.manifest_path
    assert manifest is not None
    candidates = []
    for row in read_manifest(manifest, dataset.caption_strategy, dataset.path_column, dataset.caption_column):
        if row.path is None:
            candidates.append(_Candidate(manifest, row.where, problem=SkippedFile(dataset.id, manifest, row.problem.reason, f"{row.where}: {row.problem.detail}")))
            continue
        path = (root / row.path).resolve()
        if row.problem is not None:
            candidates.append(_Candidate(path, row.path, problem=SkippedFile(dataset.id, path, row.problem.reason, f"{row.where}: {row.problem.detail}")))
        elif not path.is_file():
            candidates.append(_Candidate(path, row.path, problem=SkippedFile(dataset.id, path, "missing_file", f"{row.where} names a file that does not exist")))
        else:
            candidates.append(_Candidate(path, _relative(path, root), caption=row.caption))
    return candidates


def _conditioning_index(dataset: DatasetConfig) -> dict[tuple[str, str], Path]:
    """(relative folder, lower-case stem) -> conditioning image, for i2v look-ups."""
    if not dataset.is_i2v or dataset.conditioning_image == "first_frame":
        return {}
    root = dataset.conditioning_root or dataset.root
    index: dict[tuple[str, str], Path] = {}
    for path in _walk(root, CONDITIONING_EXTENSIONS):
        key = (_relative(path.parent, root), path.stem.lower())
        index.setdefault(key, path)  # sorted walk: .jpeg < .jpg < .png < .webp
    return index


# ------------------------------------------------------------------ one file -> Sample
class _Skip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail


def _caption(dataset: DatasetConfig, candidate: _Candidate) -> str:
    if candidate.caption is not None:
        return candidate.caption
    if dataset.caption_strategy == "filename":
        caption = caption_from_filename(candidate.path)
        if not caption:
            raise _Skip("empty_caption", "the file name gives no caption")
        return caption
    try:
        return read_caption_file(candidate.path.with_suffix(".txt"))
    except CaptionError as error:
        raise _Skip(error.reason, error.detail) from None


def _frame_plan(dataset: DatasetConfig, available: int, stride: int, fps_note: str) -> int:
    """Frames of this clip's sample under the dataset's strategy, or a skip."""
    video = dataset.video
    if video.max_frames is not None and available > video.max_frames:
        raise _Skip("too_long", f"{available} usable frames{fps_note} > max_frames {video.max_frames}")
    if video.bucket_strategy == "aspect_ratio":
        frames = min(video.num_frames, largest_valid_frames(available, stride))
    else:
        frames = frames_on_interval(min(available, video.num_frames), video.frame_interval)
    if frames < dataset.min_frames or frames == 0:
        detail = f"{available} usable frames{fps_note}"
        if frames != available:
            detail += f" -> {frames} on the {stride}k+1 grid"
        raise _Skip("too_short", f"{detail} < min_frames {dataset.min_frames}")
    return frames


def _sample_for(dataset: DatasetConfig, candidate: _Candidate, *, alignment: int, stride: int, seed: int,
                conditioning: dict[tuple[str, str], Path]) -> Sample:
    caption = _caption(dataset, candidate)
    rng = random.Random(f"{seed}:{dataset.id}:{candidate.relative}")  # stable per file across runs
    try:
        if dataset.dataset_type == "image":
            source = probe_image(candidate.path)
            frame_indices: tuple[int, ...] = (0,)
            frames = 1
            extra: dict = {}
        else:
            probe = probe_video(candidate.path)
            source = probe.info
            video = dataset.video
            selection = select_frames(probe.pts, probe.time_base, fps=video.fps, start_time=video.start_time)
            fps_note = f" at {video.fps:g} fps" if video.fps else ""
            frames = _frame_plan(dataset, len(selection), stride, fps_note)
            start = window_start(len(selection), frames, video.window, rng)
            frame_indices = tuple(selection[start : start + frames])
            # The timestamps go with the sample (compactly): decoding it later needs them and
            # then does not demux the file again, on this rank or on those it is sent to.
            extra = {"usable_frames": len(selection), "fps": video.fps or source.fps, "pts": array("q", probe.pts)}
    except DecodeError as error:
        raise _Skip(error.reason, error.detail) from None
    height, width = bucket_size(source.height, source.width, alignment=alignment, area=dataset.target_area(), shorter_edge=dataset.shorter_edge)
    bucket = Bucket(height=height, width=width, frames=frames)
    crop = crop_box(source.height, source.width, bucket, dataset.crop, rng)

    conditioning_image: SourceInfo | None = None
    if dataset.is_i2v and dataset.conditioning_image != "first_frame":
        parent = str(Path(candidate.relative).parent.as_posix())
        image_path = conditioning.get((parent, candidate.path.stem.lower()))
        if image_path is None and dataset.conditioning_image == "required":
            raise _Skip("missing_conditioning_image", f"no {candidate.path.stem}.png/.jpg/.jpeg/.webp (conditioning_image 'required')")
        if image_path is not None:
            try:
                conditioning_image = probe_image(image_path)
            except DecodeError as error:
                raise _Skip("bad_conditioning_image", f"{image_path.name}: {error.reason} {error.detail}".strip()) from None
    extra.update({"crop_mode": dataset.crop, "relative_path": candidate.relative, "split": dataset.split})
    return Sample(
        dataset_id=dataset.id,
        source=source,
        caption=caption,
        media_type=dataset.dataset_type,
        frame_indices=frame_indices,
        crop=crop,
        bucket=bucket,
        is_i2v=dataset.is_i2v,
        conditioning_image=conditioning_image,
        extra=extra,
    )


def scan_dataset(dataset: DatasetConfig, *, alignment: int, stride: int, seed: int = 0, workers: int | None = None) -> DatasetScan:
    """Probe every file of one dataset (in threads: PyAV and Pillow release the GIL while reading)."""
    result = DatasetScan(config=dataset)
    candidates = _candidates(dataset)
    conditioning = _conditioning_index(dataset)

    def one(candidate: _Candidate) -> Sample | SkippedFile:
        if candidate.problem is not None:
            return candidate.problem
        try:
            return _sample_for(dataset, candidate, alignment=alignment, stride=stride, seed=seed, conditioning=conditioning)
        except _Skip as skip:
            return SkippedFile(dataset.id, candidate.path, skip.reason, skip.detail)
        except Exception as error:  # noqa: BLE001 - an unforeseen failure on one file must not stop a run
            return SkippedFile(dataset.id, candidate.path, "unexpected_error", f"{type(error).__name__}: {error}")

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for outcome in pool.map(one, candidates):
            if isinstance(outcome, SkippedFile):
                log.warning(outcome.line())
                result.skipped.append(outcome)
            else:
                result.samples.append(outcome)
    return result


def scan_datasets(config: TrainConfig, *, require_samples: bool = True, summary: bool = True, workers: int | None = None) -> ScanResult:
    """Scan every enabled dataset of ``config.data_backend_config``.

    Logs :meth:`ScanResult.warnings` and prints a summary table of skipped files by reason (``summary``), and raises
    :class:`EmptyDatasetError` when a dataset has no usable sample (``require_samples``).
    """
    from ..models.registry import family_info

    stride = family_info(config.model_family).frame_stride
    datasets = load_dataset_configs(config, frame_stride=stride)
    seed = config.seed if config.seed is not None else 0
    result = ScanResult(datasets={}, frame_stride=stride, alignment=config.aspect_bucket_alignment)
    for dataset in datasets:
        result.datasets[dataset.id] = scan_dataset(dataset, alignment=config.aspect_bucket_alignment, stride=stride, seed=seed, workers=workers)
    if summary:  # (data inspect prints them with its tables)
        for line in result.warnings():
            log.warning(line)
    if summary and result.skipped:
        from .report import print_skip_summary

        print_skip_summary(result)
    if require_samples:
        problems = result.empty_dataset_messages()
        if problems:
            raise EmptyDatasetError(problems)
    return result
