"""The JSON API under ``/api/``: what the pages use and what scripts may call."""

from __future__ import annotations

import asyncio
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from starlette.background import BackgroundTask

from ..config import check_frame_count, parse_resolution
from ..models.registry import families
from ..training.events import EVENTS_FILE
from .configform import DATASET_FILE, CONFIG_FILE, check_config, form_fields, json_schema, load_example
from .jobs import LOG_FILE, SAMPLE_VIDEO, VIDEO_TYPES, JobManager, JobStateError, decode_data_url
from .paths import UnsafePath, resolve_inside
from .progress import read_events_tolerant
from .gpus import CPU_SLOT
from .store import ACTIVE, RUNNING, TRAIN, Job

JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
LOG_TAIL_BYTES = 32 * 1024
LOG_CHUNK_BYTES = 256 * 1024
# Served inline; anything else downloads as an attachment (a job's HTML never runs in our origin).
INLINE_TYPES = {
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".json": "application/json",
    ".jsonl": "text/plain; charset=utf-8",
    ".log": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
FILE_POLICY = "default-src 'none'; img-src 'self'; media-src 'self'; sandbox"

router = APIRouter(prefix="/api")


# ---------------------------------------------------------------------- request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConfigCheckRequest(_Body):
    config: dict[str, Any] = Field(description="config keys, as in config.json")
    dataset_config: str | None = Field(None, max_length=2_000_000, description="dataset list (JSON text) edited in the page")


class TrainJobRequest(ConfigCheckRequest):
    name: str = Field("", max_length=200)
    start: bool = Field(False, description="queue the job right away")


class LoraChoice(_Body):
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    path: str = Field(min_length=1, max_length=1000, description="path inside that job's folder")
    multiplier: float = Field(1.0, ge=-10.0, le=10.0)


def _family(info: ValidationInfo) -> str:
    """The request's model family for its frame and size rules (the default family when unset or unknown;
    an unknown one is reported when the job's config is checked)."""
    from ..config.schema import DEFAULT_MODEL_FAMILY
    from ..models.registry import families

    family = (info.data or {}).get("model_family")
    return family if family in families() else DEFAULT_MODEL_FAMILY


class VideoChoice(_Body):
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    path: str = Field(min_length=1, max_length=1000, description="a video inside that job's folder (validation or preview video)")


class SampleJobRequest(_Body):
    name: str = Field("", max_length=200)
    base_job_id: str | None = Field(None, pattern=JOB_ID_PATTERN, description="take model settings from this training job")
    model_family: str | None = Field(None, max_length=100)
    model_flavour: str | None = Field(None, max_length=100)
    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str = Field("", max_length=4000)
    image: str | None = Field(None, max_length=40_000_000, description="first frame as a data URL (PNG, JPEG, WebP)")
    lora: LoraChoice | None = None
    # None: the model family's default (the sample command asks the family).
    resolution: str | None = None
    num_frames: int | None = Field(None, ge=1, le=2049)
    steps: int | None = Field(None, ge=1, le=1000)
    guidance: float | None = Field(None, ge=0.0, le=50.0)
    seed: int = Field(42, ge=0, le=2**63 - 1)
    fps: int | None = Field(None, ge=1, le=240)
    # Video continuation / long video: continue an uploaded or a job's video, then N more segments.
    video: str | None = Field(None, max_length=300_000_000, description="video to continue as a data URL (MP4, WebM, MOV)")
    video_source: VideoChoice | None = None
    cond_frames: int | None = Field(None, ge=1, le=257, description="conditioning frames (None: the family's)")
    segments: int = Field(0, ge=0, le=30, description="continuation segments after the first clip")
    no_kv_cache: bool = False
    no_enhance_hf: bool = False
    start: bool = True

    @field_validator("prompt", "negative_prompt", "name")
    @classmethod
    def _plain_text(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        height, width = parse_resolution(value, _family(info))
        return f"{height}x{width}"

    @field_validator("num_frames")
    @classmethod
    def _frames(cls, value: int | None, info: ValidationInfo) -> int | None:
        return value if value is None else check_frame_count(value, _family(info))


# ---------------------------------------------------------------------- helpers
def manager_of(request: Request) -> JobManager:
    return request.app.state.manager


def job_or_404(manager: JobManager, job_id: str) -> Job:
    try:
        return manager.get(job_id)
    except KeyError:
        raise HTTPException(404, f"no job {job_id!r}") from None


def _eta(job: Job, latest: dict[str, Any]) -> float | None:
    """Time left, only while the job runs (a stopped or failed job's last estimate is stale)."""
    return latest.get("eta_s") if job.status == RUNNING else None


def job_summary(manager: JobManager, job: Job) -> dict[str, Any]:
    data = job.public() | {"actions": manager.actions(job), "on_cpu": job.gpus == [CPU_SLOT]}
    if job.kind == TRAIN:
        progress = manager.progress(job.id)
        data["progress"] = {
            "step": progress.step,
            "max_steps": progress.max_steps,
            "loss_smoothed": progress.latest.get("loss_smoothed"),
            "eta_s": _eta(job, progress.latest),
        }
    return data


def job_detail(manager: JobManager, job: Job) -> dict[str, Any]:
    data = job_summary(manager, job)
    data["files_base"] = f"/api/jobs/{job.id}/files/"
    data["log"] = LOG_FILE
    data["command"] = manager.command(job)
    if job.kind == TRAIN:
        progress = manager.progress(job.id).public()
        progress["latest"] = progress["latest"] | {"eta_s": _eta(job, progress["latest"])}
        data["progress"] = progress
    else:
        video = manager.output_dir(job.id) / SAMPLE_VIDEO
        sheet = video.with_suffix(".png")
        data["outputs"] = {
            "video": f"output/{video.name}" if video.is_file() else None,
            "contact_sheet": f"output/{sheet.name}" if sheet.is_file() else None,
        }
    return data


def _check_response(result, status: int) -> JSONResponse:
    return JSONResponse(result.public(), status_code=status)


# ---------------------------------------------------------------------- model and config
def _flavour_for_this_machine(info, cpu_only: bool) -> str:
    """The flavour forms start with: the family's default, or on a machine without a GPU the first
    one built locally (hub_id None: the small model CPU runs can sample)."""
    if cpu_only:
        local = [flavour.name for flavour in info.flavours.values() if flavour.hub_id is None]
        if local:
            return local[0]
    return info.default_flavour


def list_families(cpu_only: bool = False) -> list[dict[str, Any]]:
    return [
        {
            "name": info.name,
            "description": info.description,
            "default_flavour": info.default_flavour,
            "suggested_flavour": _flavour_for_this_machine(info, cpu_only),
            "flavours": [{"name": f.name, "description": f.description, "hub_id": f.hub_id} for f in info.flavours.values()],
            # What Preview's form starts from: the family's own sampling defaults (one home: its info.py).
            "defaults": {
                "resolution": f"{info.defaults.height}x{info.defaults.width}",
                "frames": info.defaults.frames,
                "steps": info.defaults.steps,
                "guidance": info.defaults.guidance,
            },
        }
        for info in families().values()
    ]


@router.get("/families")
def get_families(request: Request) -> list[dict[str, Any]]:
    """The model families; ``suggested_flavour`` is what this server's machine can run (no GPU: a local one)."""
    return list_families(cpu_only=manager_of(request).cpu_only)


@router.get("/schema")
def schema() -> dict[str, Any]:
    from ..config import GROUPS

    return {"groups": list(GROUPS), "fields": form_fields(), "json_schema": json_schema()}


def _examples(request: Request) -> dict[str, Path]:
    root = request.app.state.settings.examples_dir
    if root is None or not Path(root).is_dir():
        return {}
    return {path.parent.name: path for path in sorted(Path(root).glob("*/config.json"))}


@router.get("/examples")
def list_examples(request: Request) -> list[dict[str, str]]:
    return [{"name": name} for name in _examples(request)]


@router.get("/examples/{name}")
def get_example(name: str, request: Request) -> dict[str, Any]:
    path = _examples(request).get(name)
    if path is None:
        raise HTTPException(404, f"no example {name!r}")
    return {"name": name, "config": load_example(path)}


@router.post("/config/check")
def config_check(body: ConfigCheckRequest, request: Request) -> JSONResponse:
    settings = request.app.state.settings
    result = check_config(body.config, body.dataset_config, settings)
    return _check_response(result, 200)


# ---------------------------------------------------------------------- jobs
@router.get("/jobs")
def list_jobs(request: Request) -> list[dict[str, Any]]:
    manager = manager_of(request)
    return [job_summary(manager, job) for job in manager.list()]


@router.post("/jobs", status_code=201)
def create_job(body: TrainJobRequest, request: Request) -> JSONResponse:
    manager = manager_of(request)
    job, result = manager.create_train_job(body.name, body.config, body.dataset_config)
    if job is None:
        return _check_response(result, 422)
    if body.start:
        job = manager.start(job.id)
    return JSONResponse({"job": job_detail(manager, job), "check": result.public()}, status_code=201)


@router.post("/samples", status_code=201)
def create_sample(body: SampleJobRequest, request: Request) -> JSONResponse:
    manager = manager_of(request)
    if body.base_job_id:
        base = job_or_404(manager, body.base_job_id)
        if base.kind != TRAIN:
            raise HTTPException(422, f"job {base.id} is not a training job")
        config = manager.read_config(base.id)
    else:
        config = {key: value for key, value in (("model_family", body.model_family), ("model_flavour", body.model_flavour)) if value}
    image = None
    if body.image:
        try:
            image = decode_data_url(body.image)
        except ValueError as error:
            raise HTTPException(422, f"image: {error}") from None
    video = None
    if body.video and body.video_source is not None:
        raise HTTPException(422, "video: upload a video or pick one, not both")
    if body.video and body.image:
        raise HTTPException(422, "video: a clip starts from an image or continues a video, not both")
    if body.video:
        try:
            video = decode_data_url(body.video, VIDEO_TYPES, "video")
        except ValueError as error:
            raise HTTPException(422, f"video: {error}") from None
    video_path = None
    if body.video_source is not None:
        job_or_404(manager, body.video_source.job_id)
        try:
            video_path = resolve_inside(manager.job_dir(body.video_source.job_id), body.video_source.path)
        except (UnsafePath, FileNotFoundError) as error:
            raise HTTPException(422, f"video_source: {error}") from None
        if video_path.suffix.lower() not in VIDEO_TYPES.values() or not video_path.is_file():
            raise HTTPException(422, f"video_source: {body.video_source.path} is not a video file ({', '.join(VIDEO_TYPES.values())})")
    lora = None
    if body.lora is not None:
        job_or_404(manager, body.lora.job_id)
        try:
            resolve_inside(manager.job_dir(body.lora.job_id), body.lora.path)
        except (UnsafePath, FileNotFoundError) as error:
            raise HTTPException(422, f"lora: {error}") from None
        lora = (body.lora.job_id, body.lora.path, body.lora.multiplier)
    params = body.model_dump(include={"prompt", "negative_prompt", "resolution", "num_frames", "steps", "guidance", "seed", "fps", "base_job_id",
                                      "cond_frames", "segments", "no_kv_cache", "no_enhance_hf"})
    if video_path is not None:
        params["video_path"] = str(video_path)
    job, result = manager.create_sample_job(body.name, params, config, image=image, lora=lora, video=video)
    if job is None:
        return _check_response(result, 422)
    if body.start:
        job = manager.start(job.id)
    return JSONResponse({"job": job_detail(manager, job)}, status_code=201)


@router.get("/loras")
def list_loras(request: Request) -> list[dict[str, Any]]:
    """LoRA files of training jobs that the sampler can load (for the Preview form)."""
    manager = manager_of(request)
    found = []
    for job in manager.list():
        if job.kind != TRAIN:
            continue
        progress = manager.progress(job.id)
        entries = [(f"step {c['step']}", c["lora"]) for c in progress.checkpoints]
        if progress.final_lora:
            entries.append(("final", progress.final_lora))
        for label, files in entries:
            for fmt, path in files.items():
                if (manager.job_dir(job.id) / path).exists():  # `sample --lora` reads every format training writes
                    found.append({"job_id": job.id, "job_name": job.name, "label": label, "format": fmt, "path": path})
    return found


@router.get("/videos")
def list_videos(request: Request) -> list[dict[str, Any]]:
    """Videos the Preview can continue: training jobs' validation videos and finished previews."""
    manager = manager_of(request)
    found = []
    for job in manager.list():
        if job.kind == TRAIN:
            for validation in manager.progress(job.id).validations:
                if validation.get("video") and (manager.job_dir(job.id) / validation["video"]).is_file():
                    label = f"step {validation.get('step')} prompt {validation.get('prompt_index', 0)}" + (f" ({validation['kind']})" if validation.get("kind", "prompt") != "prompt" else "")
                    found.append({"job_id": job.id, "job_name": job.name, "label": label, "path": validation["video"]})
        else:
            video = manager.output_dir(job.id) / SAMPLE_VIDEO
            if video.is_file():
                found.append({"job_id": job.id, "job_name": job.name, "label": "preview", "path": str(video.relative_to(manager.job_dir(job.id)))})
    return found


@router.get("/jobs/{job_id}")
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    manager = manager_of(request)
    return job_detail(manager, job_or_404(manager, job_id))


def _action(request: Request, job_id: str, name: str) -> dict[str, Any]:
    manager = manager_of(request)
    job_or_404(manager, job_id)
    try:
        job = getattr(manager, name)(job_id)
    except JobStateError as error:
        raise HTTPException(409, str(error)) from None
    return job_detail(manager, job)


@router.post("/jobs/{job_id}/start")
def start_job(job_id: str, request: Request) -> dict[str, Any]:
    return _action(request, job_id, "start")


@router.post("/jobs/{job_id}/stop")
def stop_job(job_id: str, request: Request) -> dict[str, Any]:
    return _action(request, job_id, "stop")


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    return _action(request, job_id, "cancel")


@router.post("/jobs/{job_id}/resume")
def resume_job(job_id: str, request: Request) -> dict[str, Any]:
    return _action(request, job_id, "resume")


@router.get("/jobs/{job_id}/config")
def job_config(job_id: str, request: Request) -> dict[str, Any]:
    manager = manager_of(request)
    job_or_404(manager, job_id)
    folder = manager.job_dir(job_id)
    dataset = folder / DATASET_FILE
    return {
        "config": json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")),
        "dataset_config": dataset.read_text(encoding="utf-8") if dataset.is_file() else None,
    }


def _read_log(path: Path, offset: int, final: bool) -> tuple[str, int]:
    """New log text after ``offset``; holds back a partial last line while the job still writes."""
    if not path.exists():
        return "", offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(LOG_CHUNK_BYTES)
    if not final and len(data) < LOG_CHUNK_BYTES and b"\n" in data:
        data = data[: data.rfind(b"\n") + 1]
    return data.decode("utf-8", errors="replace"), offset + len(data)


@router.get("/jobs/{job_id}/log")
def job_log(job_id: str, request: Request, tail: int = 200) -> PlainTextResponse:
    """The last ``tail`` lines of the job's log (read from the end: logs can be large)."""
    manager = manager_of(request)
    job_or_404(manager, job_id)
    path = manager.log_path(job_id)
    if not path.exists():
        return PlainTextResponse("")
    lines = max(1, min(tail, 10_000))
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - lines * 400))
        text = handle.read().decode("utf-8", errors="replace")
    return PlainTextResponse("".join(text.splitlines(keepends=True)[-lines:]))


def _sse(kind: str, data: Any, cursor: str | None = None) -> str:
    lines = [f"event: {kind}"]
    if cursor is not None:
        lines.append(f"id: {cursor}")
    lines.append("data: " + json.dumps(data, default=str))
    return "\n".join(lines) + "\n\n"


def _parse_cursor(value: str | None) -> tuple[int, int] | None:
    try:
        events, log = (int(part) for part in (value or "").split(":"))
        return max(0, events), max(0, log)
    except ValueError:
        return None


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    """Server-sent events: ``trainer`` (each events.jsonl line), ``log`` (new log text),
    ``status`` (job state changes) and ``end`` (the job is over and everything was sent).

    The stream resumes from ``Last-Event-ID`` after a reconnect.
    """
    manager = manager_of(request)
    job_or_404(manager, job_id)
    poll = request.app.state.settings.poll_seconds
    events_path = manager.output_dir(job_id) / EVENTS_FILE
    log_path = manager.log_path(job_id)
    cursor = _parse_cursor(request.headers.get("last-event-id") or request.query_params.get("cursor"))
    if cursor is None:
        log_size = log_path.stat().st_size if log_path.exists() else 0
        cursor = (0, max(0, log_size - LOG_TAIL_BYTES))

    async def stream():
        events_offset, log_offset = cursor
        last_status = None
        while True:
            job = manager.get(job_id)
            over = job.status not in ACTIVE
            events, events_offset = read_events_tolerant(events_path, events_offset)
            text, log_offset = _read_log(log_path, log_offset, final=over)
            parts = [_sse("trainer", event) for event in events]
            if text:
                parts.append(_sse("log", {"text": text}))
            if job.status != last_status:
                last_status = job.status
                parts.append(_sse("status", job_summary(manager, job)))
            if parts:
                parts.append(_sse("cursor", {}, cursor=f"{events_offset}:{log_offset}"))
                yield "".join(parts)
            if over and not events and not text:
                yield _sse("end", {"status": job.status})
                return
            if await request.is_disconnected() or request.app.state.closing.is_set():
                return
            await asyncio.sleep(poll)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


# ---------------------------------------------------------------------- files
def _zip_folder(root: Path, folder: Path, scratch: Path) -> Path:
    """A folder (e.g. a PEFT LoRA) as one stored zip; only regular files inside the job folder."""
    scratch.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=scratch, suffix=".zip", delete=False)
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            target = path.resolve()
            if path.is_file() and target.is_relative_to(root):
                archive.write(target, path.relative_to(folder).as_posix())
    handle.close()
    return Path(handle.name)


@router.get("/jobs/{job_id}/files/{path:path}")
def job_file(job_id: str, path: str, request: Request, download: bool = False):
    """A file of the job, strictly inside its folder (no ``..``, absolute paths or escaping symlinks)."""
    manager = manager_of(request)
    job_or_404(manager, job_id)
    root = manager.job_dir(job_id).resolve()
    try:
        target = resolve_inside(root, path)
    except UnsafePath as error:
        raise HTTPException(403, str(error)) from None
    except FileNotFoundError:
        raise HTTPException(404, f"no file {path!r} in job {job_id}") from None
    headers = {"Content-Security-Policy": FILE_POLICY}
    if target.is_dir():
        archive = _zip_folder(root, target, request.app.state.settings.data_dir / "tmp")
        return FileResponse(
            archive, media_type="application/zip", filename=f"{target.name}.zip", headers=headers,
            background=BackgroundTask(archive.unlink, missing_ok=True),
        )
    if not target.is_file():
        raise HTTPException(404, f"{path!r} is not a regular file")
    media_type = INLINE_TYPES.get(target.suffix.lower())
    if media_type is None or download:
        return FileResponse(target, media_type=media_type or "application/octet-stream", filename=target.name, headers=headers)
    return FileResponse(target, media_type=media_type, headers=headers)
