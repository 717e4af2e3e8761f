"""Jobs through the API: run to the end, live events, stop/resume, cancel, queue, restart, preview."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import struct
import zipfile

from fastapi.testclient import TestClient
from PIL import Image

from frametuner.server.app import create_app
from frametuner.training.events import read_events

from .conftest import LOCAL_URL, wait_for, wait_status


def _create(client, config, start=True) -> dict:
    response = client.post("/api/jobs", json={"config": config, "start": start})
    assert response.status_code == 201, response.text
    return response.json()["job"]


def _events(settings, job_id) -> list[dict]:
    return read_events(settings.jobs_dir / job_id / "output" / "events.jsonl")[0]


def _safetensors_header(data: bytes) -> dict:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length])


def _stream(client, job_id, **params) -> list[tuple[str, dict]]:
    messages = []
    with client.stream("GET", f"/api/jobs/{job_id}/events", params=params) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                messages.append((kind, json.loads(line[6:])))
    return messages


def test_demo_job_runs_to_the_end_with_videos_and_lora_files(client, settings, demo_config):
    job = _create(client, demo_config)
    detail = wait_status(client, job["id"], "finished", "failed")
    assert detail["status"] == "finished", client.get(f"/api/jobs/{job['id']}/log").text
    progress = detail["progress"]
    assert progress["step"] == progress["max_steps"] == 6 and progress["terminal"] == "done"
    assert [c["step"] for c in progress["checkpoints"]] == [3, 6]
    assert sorted(progress["final_lora"]) == ["comfyui", "peft", "upstream"]
    assert [v["step"] for v in progress["validations"]] == [0, 3, 6]
    assert progress["peak_gb"] == 1.25 and detail["exit_code"] == 0

    video = client.get(progress["validations"][-1]["video"].join([f"/api/jobs/{job['id']}/files/", ""]))
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4" and video.content[4:8] == b"ftyp"
    sheet = client.get(f"/api/jobs/{job['id']}/files/{progress['validations'][-1]['contact_sheet']}")
    assert sheet.headers["content-type"] == "image/png" and sheet.content[:4] == b"\x89PNG"

    upstream = client.get(f"/api/jobs/{job['id']}/files/{progress['final_lora']['upstream']}", params={"download": 1})
    assert upstream.status_code == 200 and "attachment" in upstream.headers["content-disposition"]
    assert "blocks.0.attn.qkv.lora_A.weight" in _safetensors_header(upstream.content)
    peft = client.get(f"/api/jobs/{job['id']}/files/{progress['final_lora']['peft']}")  # a folder: zipped
    assert peft.headers["content-type"] == "application/zip"
    assert sorted(zipfile.ZipFile(io.BytesIO(peft.content)).namelist()) == ["adapter_config.json", "adapter_model.safetensors"]

    listed = client.get("/api/jobs").json()
    assert listed[0]["id"] == job["id"] and listed[0]["progress"]["step"] == 6
    assert {lora["format"] for lora in client.get("/api/loras").json()} == {"peft", "upstream", "comfyui"}


def test_real_demo_job_runs_to_the_end_with_videos_and_lora_files(real_client, real_demo_config):
    """The real `frametuner train` on the tiny model, through the server."""
    client = real_client
    job = _create(client, real_demo_config)
    detail = wait_status(client, job["id"], "finished", "failed", timeout=300)
    assert detail["status"] == "finished", client.get(f"/api/jobs/{job['id']}/log", params={"tail": 20000}).text
    progress = detail["progress"]
    assert progress["step"] == progress["max_steps"] == 6 and progress["terminal"] == "done"
    assert [c["step"] for c in progress["checkpoints"]] == [3, 6]
    assert sorted(progress["final_lora"]) == ["comfyui", "peft", "upstream"]
    assert [v["step"] for v in progress["validations"]] == [0, 3, 6]
    video = client.get(f"/api/jobs/{job['id']}/files/{progress['validations'][-1]['video']}")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4" and video.content[4:8] == b"ftyp"
    upstream = client.get(f"/api/jobs/{job['id']}/files/{progress['final_lora']['upstream']}", params={"download": 1})
    assert "lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___attn___lorahyphen___qkv.lora_down.weight" in _safetensors_header(upstream.content)


def test_real_trainer_stop_saves_a_checkpoint_and_resume_finishes(real_client, real_demo_config, tmp_path):
    client = real_client
    job = _create(client, real_demo_config | {"max_train_steps": 5000, "checkpointing_steps": 5000, "validation_prompt": None})
    wait_for(client, job["id"], lambda d: (d["progress"]["step"] or 0) >= 3, timeout=300)
    client.post(f"/api/jobs/{job['id']}/stop")
    detail = wait_status(client, job["id"], "stopped", "failed", "finished", timeout=300)
    assert detail["status"] == "stopped" and detail["exit_code"] == 0, client.get(f"/api/jobs/{job['id']}/log", params={"tail": 20000}).text
    events = read_events(tmp_path / "data" / "jobs" / job["id"] / "output" / "events.jsonl")[0]
    stopped = [e for e in events if e["event"] == "stopped"][0]
    checkpoint = tmp_path / "data" / "jobs" / job["id"] / "output" / stopped["checkpoint"]
    assert stopped["reason"] == "SIGTERM" and (checkpoint / "trainer_state.json").is_file()
    assert (checkpoint / "lora" / "lora_upstream.safetensors").is_file()


def test_event_stream_replays_every_event_then_ends(client, settings, demo_config):
    job = _create(client, demo_config)
    messages = _stream(client, job["id"])  # follows the live run until it is over
    trainer = [data for kind, data in messages if kind == "trainer"]
    assert trainer == _events(settings, job["id"])
    assert [e["step"] for e in trainer if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert [data["status"] for kind, data in messages if kind == "status"][-1] == "finished"
    log = "".join(data["text"] for kind, data in messages if kind == "log")
    assert "step 6/6" in log and "launching (CPU)" in log
    assert messages[-1] == ("end", {"status": "finished"})
    # A reconnect at the last cursor gets nothing twice.
    cursor = f"{(settings.jobs_dir / job['id'] / 'output' / 'events.jsonl').stat().st_size}:{(settings.jobs_dir / job['id'] / 'job.log').stat().st_size}"
    again = _stream(client, job["id"], cursor=cursor)
    assert [kind for kind, _ in again] == ["status", "cursor", "end"]


def test_stop_saves_a_checkpoint_and_resume_continues_from_it(client, settings, slow_config, monkeypatch):
    job = _create(client, slow_config)
    wait_for(client, job["id"], lambda d: (d["progress"]["step"] or 0) >= 3)
    stopping = client.post(f"/api/jobs/{job['id']}/stop").json()
    assert stopping["status"] in ("stopping", "stopped")
    detail = wait_status(client, job["id"], "stopped", "failed", "finished")
    assert detail["status"] == "stopped" and detail["exit_code"] == 0 and detail["actions"] == ["resume"]
    stopped = [e for e in _events(settings, job["id"]) if e["event"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["reason"] == "SIGTERM"
    assert (settings.jobs_dir / job["id"] / "output" / stopped[0]["checkpoint"] / "state.json").is_file()
    assert detail["progress"]["checkpoints"][-1]["step"] == stopped[0]["step"]

    monkeypatch.setenv("FAKE_TRAINER_STEP_SECONDS", "0")
    assert client.post(f"/api/jobs/{job['id']}/resume").json()["status"] in ("queued", "running")
    detail = wait_status(client, job["id"], "finished", "failed")
    assert detail["status"] == "finished"
    starts = [e for e in _events(settings, job["id"]) if e["event"] == "start"]
    assert [s["step"] for s in starts] == [0, stopped[0]["step"]]
    assert "--resume_from_checkpoint latest" in client.get(f"/api/jobs/{job['id']}/log", params={"tail": 10000}).text
    assert client.post(f"/api/jobs/{job['id']}/stop").status_code == 409  # not running any more


def test_cancel_kills_without_a_checkpoint(client, settings, slow_config):
    job = _create(client, slow_config)
    wait_for(client, job["id"], lambda d: (d["progress"]["step"] or 0) >= 1)
    detail = client.post(f"/api/jobs/{job['id']}/cancel").json()
    assert detail["status"] == "cancelled" and detail["exit_code"] == -signal.SIGKILL
    assert not [e for e in _events(settings, job["id"]) if e["event"] in ("stopped", "done")]


def test_a_failing_trainer_marks_the_job_failed_with_its_error(client, demo_config, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_FAIL_AT_STEP", "2")
    job = _create(client, demo_config)
    detail = wait_status(client, job["id"], "failed", "finished")
    assert detail["status"] == "failed" and detail["exit_code"] == 1
    assert detail["message"] == "out of memory at step 2 (fake) (exit code 1)"
    assert detail["actions"] == []  # no checkpoint was saved: nothing to resume from
    assert "Traceback: out of memory" in client.get(f"/api/jobs/{job['id']}/log").text


def test_one_job_per_slot_the_rest_queue(client, settings, demo_config):
    first = _create(client, demo_config | {"max_train_steps": 20})
    second = _create(client, demo_config)
    assert client.get(f"/api/jobs/{second['id']}").json()["status"] == "queued"
    done_first = wait_status(client, first["id"], "finished")
    done_second = wait_status(client, second["id"], "finished")
    assert done_second["started_at"] >= done_first["finished_at"]


def test_each_gpu_runs_its_own_job(make_settings, demo_config):
    settings = make_settings(gpus=["0", "1"])
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        jobs = [_create(client, demo_config | {"max_train_steps": 30}) for _ in range(3)]
        details = [client.get(f"/api/jobs/{j['id']}").json() for j in jobs]
        assert [d["status"] for d in details] == ["running", "running", "queued"]
        assert [d["gpus"] for d in details[:2]] == [["0"], ["1"]]
        for job in jobs:
            wait_status(client, job["id"], "finished")
        logs = [client.get(f"/api/jobs/{j['id']}/log").text for j in jobs]
        assert "CUDA_VISIBLE_DEVICES=0" in logs[0] and "CUDA_VISIBLE_DEVICES=1" in logs[1]


def test_a_job_needing_more_gpus_than_the_machine_has_fails_clearly(client, demo_config):
    job = _create(client, demo_config | {"num_processes": 2})
    detail = client.get(f"/api/jobs/{job['id']}").json()
    assert detail["status"] == "failed" and "needs 2 GPUs" in detail["message"]


def test_server_restart_reattaches_to_a_running_job(make_settings, slow_config):
    settings = make_settings()
    with TestClient(create_app(settings), base_url=LOCAL_URL) as first:
        job = _create(first, slow_config)
        pid = wait_for(first, job["id"], lambda d: (d["progress"]["step"] or 0) >= 1)["pid"]
    # The first server is gone; its job is not.
    with TestClient(create_app(make_settings()), base_url=LOCAL_URL) as second:
        detail = second.get(f"/api/jobs/{job['id']}").json()
        assert detail["status"] == "running" and detail["pid"] == pid
        step = detail["progress"]["step"]
        wait_for(second, job["id"], lambda d: d["progress"]["step"] > step)  # still followed live
        second.post(f"/api/jobs/{job['id']}/stop")
        assert wait_status(second, job["id"], "stopped", "failed", "interrupted")["status"] == "stopped"


def test_server_restart_marks_a_vanished_job_interrupted_and_it_resumes(make_settings, slow_config, monkeypatch):
    with TestClient(create_app(make_settings()), base_url=LOCAL_URL) as first:
        job = _create(first, slow_config)
        pid = wait_for(first, job["id"], lambda d: len(d["progress"]["checkpoints"]) >= 1)["pid"]
    os.killpg(pid, signal.SIGKILL)  # the machine "rebooted" while the server was down
    os.waitpid(pid, 0)
    monkeypatch.setenv("FAKE_TRAINER_STEP_SECONDS", "0")
    with TestClient(create_app(make_settings()), base_url=LOCAL_URL) as second:
        detail = second.get(f"/api/jobs/{job['id']}").json()
        assert detail["status"] == "interrupted" and detail["actions"] == ["resume"]
        assert "resume" in detail["message"]
        second.post(f"/api/jobs/{job['id']}/resume")
        assert wait_status(second, job["id"], "finished", "failed")["status"] == "finished"


def test_the_job_list_survives_a_restart(make_settings, demo_config):
    with TestClient(create_app(make_settings()), base_url=LOCAL_URL) as first:
        created = _create(first, demo_config, start=False)
    with TestClient(create_app(make_settings()), base_url=LOCAL_URL) as second:
        jobs = second.get("/api/jobs").json()
        assert [(j["id"], j["status"]) for j in jobs] == [(created["id"], "created")]
        assert second.post(f"/api/jobs/{created['id']}/start").json()["status"] in ("queued", "running")


def _png_data_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_preview_job_samples_with_a_trained_lora_and_an_image(client, settings, demo_config):
    trained = _create(client, demo_config)
    wait_status(client, trained["id"], "finished")
    lora = next(entry for entry in client.get("/api/loras").json() if entry["format"] == "upstream" and entry["label"] == "final")
    body = {
        "base_job_id": trained["id"],
        "prompt": "--a prompt that looks like a flag",
        "image": _png_data_url(),
        "lora": {"job_id": lora["job_id"], "path": lora["path"], "multiplier": 0.8},
        "resolution": "64x96",
        "num_frames": 9,
        "steps": 4,
        "guidance": 3.0,
        "seed": 7,
    }
    response = client.post("/api/samples", json=body)
    assert response.status_code == 201, response.text
    job = response.json()["job"]
    command = job["command"]
    assert "--prompt=--a prompt that looks like a flag" in command
    assert f"--lora={settings.jobs_dir / trained['id'] / lora['path']}:0.8" in command
    assert any(arg.startswith("--image=") and arg.endswith("inputs/image.png") for arg in command)
    detail = wait_status(client, job["id"], "finished", "failed")
    assert detail["status"] == "finished", client.get(f"/api/jobs/{job['id']}/log").text
    video = client.get(f"/api/jobs/{job['id']}/files/{detail['outputs']['video']}")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"


def test_preview_request_is_validated(client, demo_config):
    base = {"model_family": "longcat_video", "model_flavour": "tiny", "prompt": "a cat"}
    assert client.post("/api/samples", json=base | {"resolution": "480x830"}).status_code == 422
    assert client.post("/api/samples", json=base | {"num_frames": 10}).status_code == 422
    assert client.post("/api/samples", json=base | {"prompt": ""}).status_code == 422
    assert client.post("/api/samples", json=base | {"image": "data:text/html;base64,PGI+"}).status_code == 422
    trained = _create(client, demo_config, start=False)
    escape = client.post("/api/samples", json=base | {"lora": {"job_id": trained["id"], "path": "../../frametuner.sqlite3"}})
    assert escape.status_code == 422 and "'..' is not allowed" in escape.json()["detail"]
    assert client.post("/api/samples", json=base | {"model_flavour": "huge", "start": False}).status_code == 422
    assert client.get("/api/jobs").json()[0]["id"] == trained["id"]  # nothing else was created
