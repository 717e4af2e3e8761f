"""bench/memory.py's bookkeeping: a preset that runs out of time keeps what it measured."""

import json
import sys

from frametuner.bench import memory


def test_timed_out_preset_keeps_its_first_step(tmp_path):
    script = (
        "import json, time\n"
        "print('PROGRESS ' + json.dumps({'setup_s': 3.0}), flush=True)\n"
        "print('PROGRESS ' + json.dumps({'setup_s': 3.0, 'first_step_s': 41.25, 'first_step_peak_gb': 17.5}), flush=True)\n"
        "time.sleep(30)\n"
    )
    result = memory.run_worker([sys.executable, "-c", script], env=None, timeout=3, name="int4")
    assert result["error"] == "timed out after 3 s"
    assert result["partial"] == {"setup_s": 3.0, "first_step_s": 41.25, "first_step_peak_gb": 17.5}

    row = dict(result, case="480x832x93", mode="int4-quanto+actoffload", date="2026-12-03 11:00 UTC", device="cpu")
    memory.append_rows([row], tmp_path, "python bench/memory.py --preset int4", header=True)
    line = (tmp_path / "RESULTS.md").read_text().splitlines()[-1]
    assert "timed out after 3 s; first step 41.2 s; peak in it 17.5 GB; setup 3.0 s" in line
    assert json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])["partial"]["first_step_peak_gb"] == 17.5


def test_worker_without_progress_reports_only_the_timeout():
    result = memory.run_worker([sys.executable, "-c", "import time; time.sleep(30)"], env=None, timeout=1, name="fp8")
    assert result == {"preset": "fp8", "error": "timed out after 1 s"}
