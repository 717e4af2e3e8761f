"""End to end in a real browser: Debian's Chromium, headless, driven by Playwright.

Open the New-job page, choose longcat_video + the tiny flavour (the demo config),
check it, start it, watch it finish, and see the loss chart and a validation video
that loads. A screenshot goes to ``.ci/artifacts/``. Skips when Chromium or the
``playwright`` package is missing (CI installs both; no browser is ever downloaded).
"""

from __future__ import annotations

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


@pytest.fixture
def server_url(make_settings):
    """The real server (uvicorn) in a thread, on a free loopback port, running the real trainer."""
    import uvicorn

    from frametuner.demo import write_demo_clips
    from frametuner.server.settings import default_cli_command

    # The demo example reads examples/demo/datasets.json -> examples/demo/clips (git-ignored).
    write_demo_clips(Path(__file__).resolve().parents[2] / "examples" / "demo" / "clips")
    settings = make_settings(port=_free_port(), cli_command=default_cli_command())
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{settings.port}"
    server.should_exit = True
    thread.join(timeout=10)


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
