"""Server test fixtures.

The acceptance tests run real jobs: ``frametuner train`` on the tiny model with the demo's
synthetic clips (``real_client``, ``real_demo_config``). Tests of the job machinery that
need to slow a run down or make it fail (queueing, restarts, reattaching) use
``tests/server/fake_trainer.py``, which follows the same events contract without torch.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

try:
    from fastapi.testclient import TestClient
except (ImportError, RuntimeError) as error:  # starlette's TestClient needs httpx, a test-only dependency
    reason = str(error).strip().splitlines()[0]
    pytest.skip(f"the web server tests need fastapi's TestClient: {reason} (pip install -e '.[test]')", allow_module_level=True)

from frametuner.server import ServerSettings
from frametuner.server.app import create_app
from frametuner.server.configform import load_example
from frametuner.server.settings import package_root

FAKE_TRAINER = Path(__file__).resolve().parent / "fake_trainer.py"
DEMO_EXAMPLE = package_root() / "examples" / "demo" / "config.json"
LOCAL_URL = "http://127.0.0.1:8001"


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """The demo's synthetic clips and dataset list, written once per test session."""
    import json

    from frametuner.demo import DEMO_DATASETS, write_demo_clips

    folder = tmp_path_factory.mktemp("demo-data")
    write_demo_clips(folder / "clips")
    (folder / "datasets.json").write_text(json.dumps(DEMO_DATASETS))
    return folder / "datasets.json"


@pytest.fixture
def real_demo_config(demo_config) -> dict:
    """The demo config run by the real trainer: 6 steps, checkpoints and videos at 3 and 6."""
    return demo_config | {"validation_num_inference_steps": 2, "report_to": "none"}


@pytest.fixture
def real_client(make_settings):
    from frametuner.server.settings import default_cli_command

    with TestClient(create_app(make_settings(cli_command=default_cli_command())), base_url=LOCAL_URL) as test_client:
        yield test_client


@pytest.fixture
def trainer_command() -> list[str]:
    """The CLI prefix jobs run; ``frametuner.server.settings.default_cli_command()`` for the real trainer."""
    return [sys.executable, str(FAKE_TRAINER)]


@pytest.fixture
def demo_config(demo_dataset) -> dict:
    """The demo config as the New-job page loads it, shortened to a few steps, on the session's demo clips
    (the shipped example's clips/ exists only after `frametuner demo --dir examples/demo`)."""
    config = load_example(DEMO_EXAMPLE)
    config.update(max_train_steps=6, checkpointing_steps=3, validation_steps=3, data_backend_config=str(demo_dataset))
    return config


@pytest.fixture
def slow_config(demo_config, monkeypatch) -> dict:
    """A run long enough to stop, kill or restart the server in the middle of."""
    monkeypatch.setenv("FAKE_TRAINER_STEP_SECONDS", "0.05")
    return demo_config | {"max_train_steps": 400, "checkpointing_steps": 2}


@pytest.fixture
def make_settings(tmp_path, trainer_command, demo_dataset):
    """Server settings in this test's folder; configs may read the demo clips (``--allow-path``)."""

    def build(**overrides) -> ServerSettings:
        values = dict(
            data_dir=tmp_path / "data", cli_command=trainer_command, gpus=[], poll_seconds=0.05, base_dir=tmp_path,
            allow_paths=[demo_dataset.parent],
        )
        return ServerSettings(**(values | overrides))

    return build


@pytest.fixture
def settings(make_settings) -> ServerSettings:
    return make_settings()


@pytest.fixture(autouse=True)
def _kill_leftover_jobs(tmp_path):
    """Job processes lead their own sessions (they outlive the server): end the ones a test left."""
    yield
    from frametuner.server.store import LIVE, JobStore

    database = tmp_path / "data" / "frametuner.sqlite3"
    if not database.exists():
        return
    store = JobStore(database)
    for job in store.list(LIVE):
        if job.pid:
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    store.close()


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings), base_url=LOCAL_URL) as test_client:
        yield test_client


def wait_for(client: TestClient, job_id: str, predicate, timeout: float = 60.0) -> dict:
    """Poll GET /api/jobs/{id} until ``predicate(detail)``; fails with the last detail and log."""
    deadline = time.monotonic() + timeout
    while True:
        detail = client.get(f"/api/jobs/{job_id}").json()
        if predicate(detail):
            return detail
        if time.monotonic() > deadline:
            log = client.get(f"/api/jobs/{job_id}/log").text
            raise AssertionError(f"job {job_id} timed out in status {detail['status']}: {detail}\n--- log ---\n{log}")
        time.sleep(0.05)


def wait_status(client: TestClient, job_id: str, *statuses: str, timeout: float = 60.0) -> dict:
    return wait_for(client, job_id, lambda d: d["status"] in statuses, timeout)
