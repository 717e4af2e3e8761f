"""The New-job page's "Caption missing": a `frametuner caption` job on the form's dataset folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from frametuner.server.app import create_app
from tests.data.factory import write_clip

from .conftest import LOCAL_URL, wait_status


def _datasets(folder: Path) -> str:
    return json.dumps([{"id": "clips", "instance_data_dir": str(folder), "resolution": "48x64", "video": {"num_frames": 9}}])


def _clips(folder: Path) -> Path:
    for index in range(2):
        write_clip(folder / f"c{index}.mp4", 10, height=48, width=64)
    (folder / "c1.txt").write_text("kept as it is\n", encoding="utf-8")
    return folder


def test_caption_job_command_and_refusals(tmp_path, make_settings, demo_config):
    media = _clips(tmp_path / "media" / "clips")
    settings = make_settings(allow_paths=[tmp_path / "media"])
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        body = {"config": demo_config, "dataset_config": _datasets(media), "model": "tiny", "batch_size": 2,
                "prefix": "sks,", "start": False}
        response = client.post("/api/captions", json=body)
        assert response.status_code == 201, response.text
        job = response.json()["job"]
        assert job["kind"] == "caption" and job["status"] == "created" and job["actions"] == ["start"]
        datasets = settings.jobs_dir / job["id"] / "datasets.json"
        review = settings.jobs_dir / job["id"] / "output" / "caption_review"
        assert job["command"][len(settings.cli_command):] == [
            "caption", "--model=tiny", "--batch_size=2", "--quantize=none", f"--review={review}", "--prefix=sks,", "--", str(datasets)]
        assert json.loads(datasets.read_text())[0]["instance_data_dir"] == str(media)
        # a hub id passes as it is; the default is the 7B (tiny on this CPU-only server)
        hub = client.post("/api/captions", json=body | {"model": "Qwen/Qwen2.5-VL-3B-Instruct"}).json()["job"]
        assert "--model=Qwen/Qwen2.5-VL-3B-Instruct" in hub["command"]
        default = client.post("/api/captions", json=body | {"model": None}).json()["job"]
        assert "--model=tiny" in default["command"]
        # a local model folder outside the server's roots is refused without saying what is there
        outside = client.post("/api/captions", json=body | {"model": "/etc"})
        assert outside.status_code == 422
        errors = {e["field"]: e["message"] for e in outside.json()["errors"]}
        assert "outside the folders this server may use" in errors["caption_model"]
        # dataset folders outside the roots: the training job's own confinement refuses them
        elsewhere = _clips(tmp_path / "elsewhere")
        refused = client.post("/api/captions", json=body | {"dataset_config": _datasets(elsewhere)})
        assert refused.status_code == 422 and any(e["field"] == "data_backend_config" for e in refused.json()["errors"])
        assert not (elsewhere / "c0.txt").exists()
        assert client.post("/api/captions", json=body | {"prefix": "a\nb"}).status_code == 422


@pytest.mark.slow
def test_caption_job_writes_the_missing_captions(tmp_path, make_settings, demo_config):
    """The real `frametuner caption --model tiny` run by the server, then shown on the job page."""
    from frametuner.server.settings import default_cli_command

    media = _clips(tmp_path / "media" / "clips")
    settings = make_settings(allow_paths=[tmp_path / "media"], cli_command=default_cli_command())
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        body = {"config": demo_config, "dataset_config": _datasets(media), "model": "tiny"}
        job = client.post("/api/captions", json=body).json()["job"]
        detail = wait_status(client, job["id"], "finished", "failed", timeout=240)
        assert detail["status"] == "finished", client.get(f"/api/jobs/{job['id']}/log").text
        assert (media / "c0.txt").read_text(encoding="utf-8").strip()
        assert (media / "c1.txt").read_text(encoding="utf-8") == "kept as it is\n"
        review = client.get(f"/api/jobs/{job['id']}/files/output/caption_review/index.json").json()
        assert (review["captioned"], review["skipped"], review["failed"]) == (1, 1, 0)
        sheet = client.get(f"/api/jobs/{job['id']}/files/output/caption_review/{review['rows'][0]['sheet']}")
        assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/jpeg"
        page = client.get(f"/jobs/{job['id']}").text
        assert 'id="caption-output"' in page
        assert "captioned" in client.get(f"/api/jobs/{job['id']}/log").text
