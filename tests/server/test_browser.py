"""End to end in a real browser: Debian's Chromium, headless, driven by Playwright.

Open the New-job page, choose longcat_video + the tiny flavour (the demo config),
check it, start it, watch it finish, and see the loss chart and a validation video
that loads. A screenshot goes to ``.ci/artifacts/``. Skips when Chromium or the
``playwright`` package is missing (CI installs both; no browser is ever downloaded).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from frametuner.server.app import create_app

CHROMIUM = os.environ.get("FRAMETUNER_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / ".ci" / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install playwright)")
if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _serve(settings):
    """The server (uvicorn) for ``settings`` in a thread on its loopback port; yields its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def server_url(make_settings):
    """The real server on a free loopback port, running the real trainer."""
    from frametuner.demo import write_demo_clips
    from frametuner.server.settings import default_cli_command

    # The demo example reads examples/demo/datasets.json -> examples/demo/clips (git-ignored).
    write_demo_clips(Path(__file__).resolve().parents[2] / "examples" / "demo" / "clips")
    with _serve(make_settings(port=_free_port(), cli_command=default_cli_command())) as url:
        yield url


@pytest.fixture
def cpu_server_url(make_settings):
    """The server of a machine without a GPU, running the stand-in trainer (tests/server/fake_trainer.py)."""
    with _serve(make_settings(port=_free_port(), gpus=[])) as url:
        yield url


@pytest.fixture
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context.new_page()
        browser.close()


def test_configure_start_and_watch_the_demo_job(server_url, page):
    expect = sync_api.expect
    page.goto(f"{server_url}/jobs/new")
    page.select_option("#example", "demo")
    expect(page.locator("#check-status")).to_contain_text("loaded example 'demo'")
    page.select_option("#family", "longcat_video")
    page.select_option("#flavour", "tiny")
    for name, value in (("max_train_steps", "12"), ("validation_steps", "6"), ("checkpointing_steps", "6"), ("validation_num_inference_steps", "2")):
        page.fill(f"#f-{name}", value)
    config_json = page.locator("#config-json")
    expect(config_json).to_have_value(re.compile(r'"model_flavour": "tiny"'))
    expect(config_json).to_have_value(re.compile(r'"max_train_steps": 12'))

    # Check shows a bad value next to its field, then passes once fixed.
    page.fill("#f-lora_rank", "0")
    page.click("#check")
    expect(page.locator('[data-error-for="lora_rank"]')).to_contain_text("greater than or equal to 1")
    page.fill("#f-lora_rank", "8")
    page.click("#check")
    expect(page.locator("#check-status")).to_contain_text("config OK")

    page.click("#start")
    page.wait_for_url(re.compile(r".*/jobs/[0-9]{8}-"))
    expect(page.locator("#status")).to_have_text("running", timeout=60_000)
    expect(page.locator("#status")).to_have_text("finished", timeout=300_000)

    chart = page.locator("#loss-chart")
    expect(chart).to_have_attribute("data-points", "12")
    expect(page.locator("#stat-step")).to_have_text("12 / 12")
    video = page.locator("#validations video").first
    expect(video).to_be_attached()
    source = video.get_attribute("src")
    response = page.request.get(f"{server_url}{source}")
    assert response.status == 200 and response.headers["content-type"] == "video/mp4"
    page.wait_for_function("() => document.querySelector('#validations video').readyState >= 1", timeout=15_000)
    assert page.locator("#checkpoints a", has_text="upstream").count() >= 2  # checkpoints at steps 6 and 12
    expect(page.locator("#log")).to_contain_text("training finished")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-ui-job.png"), full_page=True)


def test_a_failed_job_shows_its_error_line_and_no_stale_numbers(cpu_server_url, page, demo_config, tmp_path, monkeypatch):
    """Issue 19 point 12: the error line instead of "exit code 2; see the log"; no resume without a
    checkpoint; no ETA once it stopped; a CPU job says CPU instead of "GPU memory (peak) 0 GB"."""
    import json

    expect = sync_api.expect
    # A job whose dataset folder is gone when it starts: the trainer's `error:` line.
    clips = tmp_path / "data" / "vanishing-clips"  # inside the server's data dir (an allowed root)
    clips.mkdir(parents=True)
    dataset = json.dumps([{"id": "clips", "instance_data_dir": str(clips), "video": {"num_frames": 9}}])
    created = page.request.post(f"{cpu_server_url}/api/jobs", data={"config": demo_config, "dataset_config": dataset})
    assert created.status == 201, created.text()
    job_id = created.json()["job"]["id"]
    clips.rmdir()
    assert page.request.post(f"{cpu_server_url}/api/jobs/{job_id}/start").status == 200
    page.goto(f"{cpu_server_url}/jobs/{job_id}")
    expect(page.locator("#status")).to_have_text("failed", timeout=30_000)
    expect(page.locator("#message")).to_contain_text("vanishing-clips does not exist; fix the path")
    expect(page.locator("#message")).to_contain_text("(exit code 2)")
    expect(page.locator("#message")).not_to_contain_text("see the log")
    expect(page.locator("#actions button")).to_have_count(0)

    # A job that ran a few steps on the CPU, then failed before its first checkpoint.
    monkeypatch.setenv("FAKE_TRAINER_FAIL_AT_STEP", "2")
    created = page.request.post(f"{cpu_server_url}/api/jobs", data={"config": demo_config, "start": True})
    page.goto(f"{cpu_server_url}/jobs/{created.json()['job']['id']}")
    expect(page.locator("#status")).to_have_text("failed", timeout=30_000)
    expect(page.locator("#message")).to_contain_text("out of memory at step 2 (fake) (exit code 1)")
    expect(page.locator("#stat-step")).to_have_text("2 / 6")
    expect(page.locator("#stat-eta")).to_have_text("–")
    expect(page.locator("#stat-mem-label")).to_have_text("Device")
    expect(page.locator("#stat-mem")).to_have_text("CPU")
    expect(page.locator("#actions button", has_text="Resume")).to_have_count(0)


def test_preview_defaults_to_a_flavour_the_cpu_can_run(cpu_server_url, page):
    expect = sync_api.expect
    page.goto(f"{cpu_server_url}/preview")
    expect(page.locator("#flavour")).to_have_value("tiny")
    expect(page.locator("#flavour option")).not_to_have_count(0)
    # The form's numbers are the chosen family's defaults, and follow a change of family.
    from frametuner.models.registry import families

    for name, info in families().items():
        page.select_option("#family", name)
        d = info.defaults
        expect(page.locator("#resolution")).to_have_value(f"{d.height}x{d.width}")
        expect(page.locator("#num-frames")).to_have_value(str(d.frames))
        expect(page.locator("#steps")).to_have_value(str(d.steps))


def test_check_says_how_to_make_the_demo_clips(make_settings, page, tmp_path):
    """Issue 19 point 3: the shipped demo example without its clips fails Check with the command that makes them."""
    import shutil

    from frametuner.server.settings import package_root

    examples = tmp_path / "examples"
    shutil.copytree(package_root() / "examples" / "demo", examples / "demo", ignore=shutil.ignore_patterns("clips", "output"))
    with _serve(make_settings(port=_free_port(), gpus=[], examples_dir=examples)) as url:
        expect = sync_api.expect
        page.goto(f"{url}/jobs/new")
        page.select_option("#example", "demo")
        expect(page.locator("#check-status")).to_contain_text("loaded example 'demo'")
        page.click("#check")
        error = page.locator('[data-error-for="data_backend_config"]').first
        expect(error).to_contain_text("clips does not exist")
        expect(error).to_contain_text(f"run `frametuner demo --dir {examples / 'demo'}` first")


def test_preview_continues_an_uploaded_video_into_a_long_video(cpu_server_url, page, tmp_path):
    """Issue 21: the Preview form's video, extra segments and KV-cache switch reach `frametuner sample`."""
    import json
    import urllib.request

    import numpy as np

    from frametuner.sampling.video import write_video

    clip = write_video(np.zeros((9, 32, 48, 3), np.uint8), tmp_path / "clip.mp4", fps=15)
    expect = sync_api.expect
    page.goto(f"{cpu_server_url}/preview")
    expect(page.locator("#flavour")).to_have_value("tiny")
    page.fill("#prompt", "the fox keeps running")
    page.set_input_files("#video", str(clip))
    page.fill("#cond-frames", "5")
    page.fill("#segments", "2")
    page.uncheck("#kv-cache")
    page.click("#render")
    page.wait_for_url(re.compile(r".*/jobs/[^/]+$"))
    job_id = page.url.rstrip("/").rsplit("/", 1)[1]
    with urllib.request.urlopen(f"{cpu_server_url}/api/jobs/{job_id}") as response:
        command = json.load(response)["command"]
    assert any(arg.startswith("--video=") and arg.endswith("inputs/video.mp4") for arg in command), command
    assert "--segments=2" in command and "--cond_frames=5" in command and "--no_kv_cache" in command
    assert "--no_enhance_hf" not in command
