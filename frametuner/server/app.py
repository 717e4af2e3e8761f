"""The FastAPI application: JSON API, server-rendered pages, vendored static files."""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ..models.registry import families
from .api import job_detail, job_or_404, job_summary, list_families, router
from .captions import router as captions_router
from .configform import DATASET_FILE, SERVER_OWNED_KEYS, grouped_form_fields
from .jobs import JobManager
from .security import guard
from .settings import ServerSettings
from .store import TRAIN

HERE = Path(__file__).resolve().parent
# Form groups shown open on the New-job page; the rest open when they hold changes or errors.
OPEN_GROUPS = ("model", "data", "lora", "optimisation", "validation")


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("frametuner")
    except PackageNotFoundError:
        return "dev"


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["version"] = _package_version()
# Page data goes into <script type="application/json"> through |tojson (HTML-safe escaping).
templates.env.policies["json.dumps_kwargs"] = {"sort_keys": False, "default": str}


def create_app(settings: ServerSettings, manager: JobManager | None = None) -> FastAPI:
    """The app for ``settings``; the job scheduler runs while the app's lifespan is active."""
    manager = manager or JobManager(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager.run_in_background()
        try:
            yield
        finally:
            app.state.closing.set()
            manager.shutdown()

    app = FastAPI(title="frametuner", lifespan=lifespan, docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.settings = settings
    app.state.manager = manager
    app.state.closing = threading.Event()
    app.middleware("http")(guard)
    app.include_router(router)
    app.include_router(captions_router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_pages(app)
    return app


def _page(request: Request, template: str, title: str, data: dict[str, Any], **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request, template, {"title": title, "page_data": data, **context}
    )


def _add_pages(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page(request: Request):
        manager = request.app.state.manager
        jobs = [job_summary(manager, job) for job in manager.list()]
        return _page(request, "jobs.html", "Jobs", {"jobs": jobs}, jobs=jobs, slots=manager.slots)

    @app.get("/jobs/new", response_class=HTMLResponse, include_in_schema=False)
    def new_job_page(request: Request, source: str | None = None, example: str | None = None):
        """The new-job form; ``?source=JOB`` starts from a copy of that job's config and dataset list."""
        manager = request.app.state.manager
        initial: dict[str, Any] = {"config": {}, "dataset_config": None}
        if source:
            job = job_or_404(manager, source)
            if job.kind == TRAIN:
                folder = manager.job_dir(job.id)
                config = {k: v for k, v in manager.read_config(job.id).items() if k not in SERVER_OWNED_KEYS}
                dataset = folder / DATASET_FILE
                if dataset.is_file():
                    initial["dataset_config"] = dataset.read_text(encoding="utf-8")
                    config.pop("data_backend_config", None)
                initial["config"] = config
        data = {"families": list_families(manager.cpu_only), "initial": initial, "example": example}
        return _page(
            request, "new_job.html", "New job", data,
            groups=grouped_form_fields(), families=families(), open_groups=OPEN_GROUPS,
            read_roots=", ".join(["the job's folder", *map(str, request.app.state.settings.read_roots)]),
        )

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(job_id: str, request: Request):
        manager = request.app.state.manager
        detail = job_detail(manager, job_or_404(manager, job_id))
        return _page(request, "job.html", detail["name"], {"job": detail}, job=detail)

    @app.get("/preview", response_class=HTMLResponse, include_in_schema=False)
    def preview_page(request: Request):
        manager = request.app.state.manager
        train_jobs = [{"id": j.id, "name": j.name} for j in manager.list() if j.kind == TRAIN]
        data = {"families": list_families(manager.cpu_only), "train_jobs": train_jobs}
        return _page(request, "preview.html", "Preview", data, train_jobs=train_jobs)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: HTTPException):
        from fastapi.responses import JSONResponse, PlainTextResponse

        detail = getattr(exc, "detail", "not found")
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": detail}, status_code=404)
        return PlainTextResponse(str(detail), status_code=404)
