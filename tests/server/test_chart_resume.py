"""The job page's loss chart after a resume: ``LossChart.truncate`` (called by job.js on a
``resume`` or ``start`` event) drops the killed launch's steps past the checkpoint at once,
before the resumed launch logs any.
In Chromium, like test_browser.py (skips the same way when it or Playwright is missing)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import frametuner.server

STATIC = Path(frametuner.server.__file__).resolve().parent / "static"

CHROMIUM = os.environ.get("FRAMETUNER_CHROMIUM", "/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install playwright)")
if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


def test_the_chart_drops_the_killed_launchs_steps_at_the_resume():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.set_content('<script id="page-data" type="application/json">{}</script><canvas id="c" style="width:400px;height:200px"></canvas><div id="t" hidden></div>')
        for script in ("common.js", "chart.js"):  # as the job page loads them (chart.js formats with common.js)
            page.add_script_tag(path=str(STATIC / script))
        points = page.evaluate(
            """() => {
              const chart = new LossChart(document.getElementById("c"), document.getElementById("t"));
              const seen = [];
              for (let step = 1; step <= 9; step++) chart.add({step, loss: 1 / step, smoothed: 1 / step});  // killed at 9
              seen.push(chart.points.map((p) => p.step).join(","));
              chart.truncate(6);  // resumed from checkpoint 6
              seen.push(chart.points.map((p) => p.step).join(","), chart.canvas.dataset.points);
              chart.add({step: 7, loss: 0.5, smoothed: 0.5});
              seen.push(chart.points.map((p) => `${p.step}:${p.loss}`).slice(-2).join(","));
              return seen;
            }"""
        )
        browser.close()
    assert points == ["1,2,3,4,5,6,7,8,9", "1,2,3,4,5,6", "6", f"6:{1 / 6},7:0.5"]

