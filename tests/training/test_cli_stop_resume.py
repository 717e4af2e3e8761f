"""Ctrl-C on ``frametuner train``: the stop summary names the exact resume command, and that
command continues the run from the checkpoint the stop wrote (issue 19 point 11)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from frametuner.demo import prepare_demo

REPO = Path(__file__).resolve().parents[2]


def events(output: Path) -> list[dict]:
    path = output / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.mark.slow
def test_sigint_summary_gives_the_command_that_resumes(tmp_path):
    config = prepare_demo(tmp_path / "demo")
    output = tmp_path / "run output"  # a space: the command must be quoted to be exact
    flags = ["--output_dir", str(output), "--max_train_steps", "100000", "--validation_steps", "100000",
             "--checkpointing_steps", "100000", "--lora_rank", "4", "--report_to", "none",
             "--validation_prompt", "null", "--lora_export_formats", "[\"peft\"]"]
    argv = [sys.executable, "-m", "frametuner", "train", "--config", str(config), *flags]
    env = {**os.environ, "COLUMNS": "80"}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and not any(e["event"] == "step" for e in events(output)):
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-3000:]
    [stopped] = [e for e in events(output) if e["event"] == "stopped"]
    assert stopped["reason"] == "SIGINT"

    lines = [line for line in (out + err).splitlines() if "resume with" in line]
    assert len(lines) == 1, out + err
    command = lines[0].split("resume with", 1)[1].strip().strip("│|").strip()
    tokens = shlex.split(command)
    assert tokens[:2] == ["frametuner", "train"] and tokens[-2:] == ["--resume_from_checkpoint", "latest"]
    assert tokens[2:-2] == ["--config", str(config), *flags]  # the command line exactly as given

    # The command resumes: two more steps from the stop's checkpoint, in the same output folder.
    step = stopped["step"]
    resumed = [sys.executable, "-m", "frametuner", *tokens[1:]]
    resumed[resumed.index("--max_train_steps") + 1] = str(step + 2)
    done = subprocess.run(resumed, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    later = [e for e in events(output) if e["event"] == "step" and e["step"] > step]
    assert [e["step"] for e in later][-2:] == [step + 1, step + 2]
