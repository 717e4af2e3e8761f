"""Small parts of the server: GPU slots, process liveness across restarts, safe paths, the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from frametuner.server.gpus import detect_gpus, scheduling_slots
from frametuner.server.jobs import _pid_alive, _process_start_tick, decode_data_url
from frametuner.server.paths import UnsafePath, relative_to_job, resolve_inside
from frametuner.server.store import FINISHED, Job, JobStore


@pytest.mark.parametrize(
    ("visible", "expected"),
    [("0,1,3", ["0", "1", "3"]), ("GPU-5f2c,GPU-77aa", ["GPU-5f2c", "GPU-77aa"]), ("", []), ("-1", [])],
)
def test_gpus_follow_cuda_visible_devices(monkeypatch, visible, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert detect_gpus() == expected


def test_gpus_from_nvidia_smi_and_cpu_fallback(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == ["0", "1"]
    fake.unlink()
    assert detect_gpus() == [] and scheduling_slots() == ["cpu"]
    assert scheduling_slots(["2"]) == ["2"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_process_started_by_an_earlier_server_is_found_by_pid_and_start_tick():
    # A grandchild (reparented away from us), like a job whose server was restarted.
    launcher = subprocess.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True)
    pid = int(launcher.stdout)
    try:
        _, tick = _process_start_tick(pid)
        assert _pid_alive(pid, tick) == (True, None)
        assert _pid_alive(pid, str(int(tick) + 1))[0] is False  # same pid, another process: not ours
    finally:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _pid_alive(pid, tick)[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _pid_alive(pid, tick)[0] is False


def test_our_own_children_report_their_exit_code():
    child = subprocess.Popen(["sh", "-c", "exit 3"])
    time.sleep(0.2)
    deadline = time.monotonic() + 5
    while (state := _pid_alive(child.pid, None))[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state == (False, 3)


def test_resolve_inside(tmp_path):
    (tmp_path / "job" / "output").mkdir(parents=True)
    (tmp_path / "job" / "output" / "a.txt").write_text("a")
    root = tmp_path / "job"
    assert resolve_inside(root, "output/a.txt") == (root / "output" / "a.txt").resolve()
    assert resolve_inside(root, "output/./a.txt") == (root / "output" / "a.txt").resolve()
    for bad in ("../job/output/a.txt", "/etc/passwd", "", "a\x00b", "output\\a.txt", "~root"):
        with pytest.raises(UnsafePath):
            resolve_inside(root, bad)
    with pytest.raises(FileNotFoundError):
        resolve_inside(root, "output/b.txt")


def test_event_paths_outside_the_job_are_dropped(tmp_path):
    job, output = tmp_path / "job", tmp_path / "job" / "output"
    assert relative_to_job(job, output, "validation/v.mp4") == "output/validation/v.mp4"
    assert relative_to_job(job, output, "../../elsewhere.mp4") is None
    assert relative_to_job(job, output, "/etc/passwd") is None


def test_store_round_trips_jobs(tmp_path):
    store = JobStore(tmp_path / "db.sqlite3")
    job = store.insert(Job(id="j1", kind="sample", name="x", params={"prompt": "a"}, gpus=["0"]))
    assert store.get("j1") == job
    updated = store.update("j1", status=FINISHED, exit_code=0, resume=True)
    assert (updated.status, updated.exit_code, updated.resume, updated.params) == (FINISHED, 0, True, {"prompt": "a"})
    assert [j.id for j in store.list((FINISHED,))] == ["j1"] and store.list(("running",)) == []
    with pytest.raises(KeyError):
        store.update("j1", pid_typo=3)
    store.close()
    assert JobStore(tmp_path / "db.sqlite3").get("j1").status == FINISHED  # persisted


def test_image_data_urls():
    assert decode_data_url("data:image/png;base64,iVBORw0KGgo=") == (b"\x89PNG\r\n\x1a\n", ".png")
    for bad in ("data:image/svg+xml;base64,PHN2Zz4=", "data:image/png,raw", "http://x/y.png", "data:image/png;base64,@@@"):
        with pytest.raises(ValueError):
            decode_data_url(bad)


def test_progress_folds_events_and_survives_a_damaged_line(tmp_path):
    from frametuner.server.progress import RunProgress

    job, output = tmp_path / "job", tmp_path / "job" / "output"
    output.mkdir(parents=True)
    lines = [
        {"event": "start", "max_steps": 4, "step": 0},
        {"event": "step", "step": 1, "loss": 0.9, "loss_smoothed": 0.9, "lr": 1e-4, "peak_gb": 2.5},
        {"event": "checkpoint", "step": 1, "path": "checkpoints/c1", "lora": {"upstream": "checkpoints/c1/u.safetensors", "evil": "../../x"}},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"event": "step", "st'  # killed mid-write
    (output / "events.jsonl").write_text(text + "\n" + json.dumps({"event": "step", "step": 2, "loss": 0.5, "peak_gb": 3.0}) + "\n")
    progress = RunProgress(job, output).update()
    assert (progress.max_steps, progress.step, progress.peak_gb) == (4, 2, 3.0)
    assert progress.checkpoints == [{"step": 1, "path": "output/checkpoints/c1", "lora": {"upstream": "output/checkpoints/c1/u.safetensors"}}]
    with open(output / "events.jsonl", "a") as handle:
        handle.write(json.dumps({"event": "done", "step": 4, "lora": {"peft": "lora/peft"}}) + "\n")
    progress.update()  # only the new line is read
    assert (progress.terminal, progress.step, progress.final_lora) == ("done", 4, {"peft": "output/lora/peft"})
