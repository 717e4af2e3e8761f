"""Timing and result files shared by the benchmarks (bench/*.py).

Every row goes to ``results.jsonl`` (one JSON object) and to a table in ``RESULTS.md``,
appended as soon as it is measured so a run cut off by a time limit keeps what it did.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

REPO = Path(__file__).resolve().parents[2]
HEADER = "# Benchmark results\n\nAppended by `bench/*.py`; never edited by hand.\n"


def cuda_time(fn: Callable[[], Any], warmup: int, iters: int) -> list[float]:
    """Seconds per call, CUDA events around each call, after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    return times


def timed(fn: Callable[[], Any], warmup: int, iters: int, cuda: bool) -> list[float]:
    """Seconds per call after warm-up: CUDA events on a GPU (:func:`cuda_time`), the wall clock otherwise."""
    if cuda:
        return cuda_time(fn, warmup, iters)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


@functools.cache
def git_commit() -> str:
    """The commit benchmarked; FRAMETUNER_GIT_COMMIT where the tree travelled without .git."""
    if os.environ.get("FRAMETUNER_GIT_COMMIT"):
        return os.environ["FRAMETUNER_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def start_section(results_dir: Path, date: str, device: str, command: str, columns: Sequence[str], intro: str = "") -> None:
    """This run's heading, command (and ``intro`` paragraph) and table header in RESULTS.md."""
    results_dir.mkdir(parents=True, exist_ok=True)
    md = results_dir / "RESULTS.md"
    with open(md, "a") as handle:
        if md.stat().st_size == 0:
            handle.write(HEADER)
        handle.write(f"\n## {date} — {device}, torch {torch.__version__}, commit {git_commit()}\n\n")
        handle.write(f"Command: `{command}`\n\n")
        if intro:
            handle.write(intro + "\n\n")
        handle.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")


def append_row(row: dict, cells: Sequence[str], results_dir: Path) -> None:
    """One measured row: the full object to results.jsonl, ``cells`` to the RESULTS.md table."""
    with open(results_dir / "results.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")
    with open(results_dir / "RESULTS.md", "a") as handle:
        handle.write("| " + " | ".join(cells) + " |\n")
