"""What a job's page says about it (issue 19 point 12): the error line of a failed job, resume only
from a checkpoint, no stale ETA, CPU jobs without GPU memory, and Preview's flavour on a CPU-only server."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from frametuner.server.app import create_app
from frametuner.server.jobs import last_error_line

from .conftest import LOCAL_URL, wait_for, wait_status


def _create(client, config, start=True) -> dict:
    response = client.post("/api/jobs", json={"config": config, "start": start})
    assert response.status_code == 201, response.text
    return response.json()["job"]


def test_a_job_failing_at_start_shows_its_error_line(client, settings, demo_config, demo_dataset):
    """The dataset folder goes away between Save and Start: the trainer's `error:` line is the job's message."""
    clips = settings.data_dir / "vanishing-clips"
    clips.mkdir(parents=True)
    dataset = json.dumps([{"id": "clips", "instance_data_dir": str(clips), "video": {"num_frames": 9}}])
    job = client.post("/api/jobs", json={"config": demo_config, "dataset_config": dataset}).json()["job"]
    clips.rmdir()
    client.post(f"/api/jobs/{job['id']}/start")
    detail = wait_status(client, job["id"], "failed", "finished")
    assert detail["status"] == "failed" and detail["exit_code"] == 2
    assert detail["message"].startswith(f"{settings.jobs_dir / job['id'] / 'datasets.json'}:1: dataset 'clips': 'instance_data_dir': ")
    assert "vanishing-clips does not exist; fix the path" in detail["message"] and detail["message"].endswith("(exit code 2)")
    assert "see the log" not in detail["message"]
    # No checkpoint: no resume offered, and asking anyway says why.
    assert detail["actions"] == []
    refused = client.post(f"/api/jobs/{job['id']}/resume")
    assert refused.status_code == 409 and "no checkpoint" in refused.json()["detail"]
    page = client.get(f"/jobs/{job['id']}").text
    assert "vanishing-clips does not exist" in page


def test_last_error_line_reads_the_latest_launch(tmp_path):
    log = tmp_path / "job.log"
    log.write_text(
        "===== 2026-01-01 launching (CPU): frametuner train\n"
        "error: an old launch's problem\n"
        "===== 2026-01-02 launching (CPU): frametuner train --resume_from_checkpoint latest\n"
        "step 3/10\rstep 4/10\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    )
    assert last_error_line(log) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    with open(log, "a") as handle:
        handle.write("error: the dataset list: not found; check the path\n")
    assert last_error_line(log) == "the dataset list: not found; check the path"
    log.write_text("===== launching\nall fine\n")
    assert last_error_line(log) is None
    assert last_error_line(tmp_path / "missing.log") is None


def test_a_stopped_job_has_no_eta_and_a_cpu_job_no_gpu_memory(client, settings, slow_config):
    job = _create(client, slow_config)
    running = wait_for(client, job["id"], lambda d: (d["progress"]["step"] or 0) >= 3)
    assert running["on_cpu"] is True and running["gpus"] == ["cpu"]
    assert running["progress"]["latest"]["eta_s"] is not None
    client.post(f"/api/jobs/{job['id']}/stop")
    detail = wait_status(client, job["id"], "stopped", "failed")
    assert detail["status"] == "stopped" and detail["actions"] == ["resume"]
    assert detail["progress"]["latest"]["eta_s"] is None
    (summary,) = client.get("/api/jobs").json()
    assert summary["progress"]["eta_s"] is None
    page = client.get(f"/jobs/{job['id']}").text
    assert 'id="stat-mem-label"' in page  # job.js names it "Device: CPU" for a job on the CPU slot


def test_a_gpu_job_is_not_on_cpu(make_settings, demo_config):
    with TestClient(create_app(make_settings(gpus=["0"])), base_url=LOCAL_URL) as client:
        job = _create(client, demo_config)
        detail = wait_status(client, job["id"], "finished")
        assert detail["on_cpu"] is False and detail["gpus"] == ["0"]


def _suggested(client) -> dict[str, str]:
    return {f["name"]: f["suggested_flavour"] for f in client.get("/api/families").json()}


def test_preview_suggests_a_local_flavour_without_a_gpu(make_settings):
    from frametuner.models.registry import families

    local = {name: next(f.name for f in info.flavours.values() if f.hub_id is None) for name, info in families().items()}
    with TestClient(create_app(make_settings(gpus=[])), base_url=LOCAL_URL) as client:
        assert _suggested(client) == local
        assert local["longcat_video"] == "tiny"
        page = client.get("/preview").text
        assert '"suggested_flavour": "tiny"' in page
    with TestClient(create_app(make_settings(gpus=["0"])), base_url=LOCAL_URL) as client:
        assert _suggested(client) == {name: info.default_flavour for name, info in families().items()}
