"""Caption jobs: the New-job page's "Caption missing" runs ``frametuner caption`` as a job.

The form's config and dataset list are written and checked exactly as for a training job
(``write_job_config``: every dataset folder confined to the server's roots), then the job
runs ``frametuner caption --model M ... -- <the job's dataset list>`` on a GPU slot like
training. It writes ``clip.txt`` beside each clip that has no caption, inside those dataset
folders (the only files it writes outside its job folder), never replacing one unless asked,
and its review (contact sheets beside captions) into the job's ``output/caption_review/``,
which the job page shows. Stopping it loses nothing: a new Caption job continues where it
stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field, field_validator

from ..caption import DEFAULT_MODEL
from .configform import CheckResult, Problem, write_job_config
from .paths import HUB_ID, Roots, confine_path
from .store import CAPTION, Job

CAPTION_REVIEW = "caption_review"  # inside the job's output/
TINY_CAPTIONER = "tiny"

router = APIRouter(prefix="/api")


def _request_class():
    from .api import ConfigCheckRequest

    class CaptionJobRequest(ConfigCheckRequest):
        name: str = Field("", max_length=200)
        model: str | None = Field(None, max_length=1000, description=f"hub id, local folder or 'tiny' (default {DEFAULT_MODEL}; tiny on a CPU-only server)")
        batch_size: int = Field(1, ge=1, le=64)
        quantize: Literal["none", "int8", "int4"] = "none"
        prefix: str = Field("", max_length=200, description="put before every caption (a trigger word)")
        overwrite: bool = False
        start: bool = True

        @field_validator("name", "prefix", "model")
        @classmethod
        def _plain_text(cls, value: str | None) -> str | None:
            if value is not None and ("\x00" in value or "\n" in value):
                raise ValueError("must be one line of text")
            return value

    return CaptionJobRequest


CaptionJobRequest = _request_class()


def _model(value: str | None, cpu_only: bool, folder: Path, settings) -> tuple[str | None, str | None]:
    """The model argument: 'tiny', a hub id, or a local folder inside the server's roots."""
    value = (value or "").strip() or (TINY_CAPTIONER if cpu_only else DEFAULT_MODEL)
    if value == TINY_CAPTIONER or (HUB_ID.fullmatch(value) and ".." not in value):
        return value, None
    path, problem = confine_path(value, settings.base_dir, Roots(job=folder, read=settings.read_roots))
    return (str(path), None) if path is not None else (None, problem)


def create_caption_job(manager, body) -> tuple[Any, CheckResult]:
    """Check and write the job's config and dataset list, then insert a caption job (or return the problems)."""
    from .jobs import _remove_tree, new_job_id

    settings = manager.settings
    job_id = new_job_id()
    folder = manager.job_dir(job_id)
    result = write_job_config(folder, body.config, body.dataset_config, settings)
    datasets = result.config.get("data_backend_config") if result.config else None
    if not isinstance(datasets, str) or not datasets:
        result.errors.append(Problem("data_backend_config", "give the dataset list to caption (the Dataset config box, or data_backend_config)"))
    model, problem = _model(body.model, manager.cpu_only, folder, settings)
    if problem:
        result.errors.append(Problem("caption_model", problem))
    if not result.ok:
        _remove_tree(folder)
        return None, result
    params = {"model": model, "batch_size": body.batch_size, "quantize": body.quantize, "prefix": body.prefix,
              "overwrite": body.overwrite, "datasets": datasets}
    title = body.name.strip() or f"caption missing: {Path(datasets).name}"
    return manager.store.insert(Job(id=job_id, kind=CAPTION, name=title, params=params)), result


def caption_command(prefix: list[str], params: dict[str, Any], output_dir: Path) -> list[str]:
    """``frametuner caption`` for a caption job (flags as ``--flag=value``; the list after ``--``)."""
    args = prefix + ["caption", f"--model={params['model']}", f"--batch_size={int(params['batch_size'])}",
                     f"--quantize={params['quantize']}", f"--review={output_dir / CAPTION_REVIEW}"]
    if params.get("prefix"):
        args.append(f"--prefix={params['prefix']}")
    if params.get("overwrite"):
        args.append("--overwrite")
    return args + ["--", str(params["datasets"])]


@router.post("/captions", status_code=201)
def create_caption(body: CaptionJobRequest, request: Request) -> JSONResponse:  # type: ignore[valid-type]
    from .api import job_detail, manager_of

    manager = manager_of(request)
    job, result = create_caption_job(manager, body)
    if job is None:
        return JSONResponse(result.public(), status_code=422)
    if body.start:
        job = manager.start(job.id)
    return JSONResponse({"job": job_detail(manager, job), "check": result.public()}, status_code=201)
