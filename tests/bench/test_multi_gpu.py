"""The multi-GPU benchmark harness: its plan, its arithmetic, and a whole run on the CPU (tiny model, gloo)."""

from __future__ import annotations

import json

import pytest

from frametuner.bench.multi_gpu import Run, last_error, main, plan, scaling_efficiency


def test_plan_measures_each_baseline_first_and_skips_what_cannot_fit():
    runs, skipped = plan(["480x832x93"], ["lora", "full"], ["ddp", "fsdp"], [1, 2, 8])
    assert runs == [
        Run("480x832x93", "lora", "none", 1),
        Run("480x832x93", "lora", "ddp", 2), Run("480x832x93", "lora", "fsdp", 2),
        Run("480x832x93", "lora", "ddp", 8), Run("480x832x93", "lora", "fsdp", 8),
        Run("480x832x93", "full", "fsdp", 2), Run("480x832x93", "full", "fsdp", 8),
    ]
    assert len(skipped) == 2 and any("full/ddp" in note for note in skipped) and any("1 GPU" in note for note in skipped)


def test_scaling_efficiency_is_weak_scaling_against_the_fewest_gpus():
    measured = {("c", "lora"): (1, 2.0), ("c", "full"): (2, 4.0)}
    assert scaling_efficiency(Run("c", "lora", "ddp", 2), 2.2, measured) == (pytest.approx(2.0 / 2.2), "vs 1 GPU")
    assert scaling_efficiency(Run("c", "full", "fsdp", 8), 5.0, measured) == (pytest.approx(0.8), "vs 2 GPUs")
    assert scaling_efficiency(Run("d", "lora", "ddp", 2), 1.0, measured) == (None, "no baseline")


def test_last_error_names_the_rank_exception_or_the_cpp_abort_not_torchruns_summary():
    python_error = (
        "[rank1]: Traceback (most recent call last):\n[rank1]:   File \"x.py\", line 3, in <module>\n"
        "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\ntraceback : Signal 6 (SIGABRT) received by PID 7\n"
    )
    assert last_error(python_error, 1) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    abort = (
        "terminate called after throwing an instance of 'gloo::IoException'\n"
        "  what():  [pair.cc:598] Connection closed by peer [127.0.0.1]:5123\n"
        "traceback : Signal 6 (SIGABRT) received by PID 7\n"
    )
    assert last_error(abort, 1) == "what():  [pair.cc:598] Connection closed by peer [127.0.0.1]:5123"
    assert last_error("traceback : Signal 9 (SIGKILL) received by PID 7\n", 1) == "traceback : Signal 9 (SIGKILL) received by PID 7"
    assert last_error("", 3) == "exit code 3"


def test_smoke_run_on_the_cpu_writes_rows_with_scaling_and_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code = main([
        "--flavour", "tiny", "--gpus", "1,2", "--case", "32x48x5", "--strategy", "fsdp", "--warmup", "0", "--iters", "2",
        "--results-dir", str(tmp_path), "--output-dir", str(tmp_path / "runs"),
    ])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["strategy"], r["num_processes"]) for r in rows] == [("none", 1), ("fsdp", 2)]
    one, two = rows
    assert one["scaling_efficiency"] == 1.0 and two["scaling_efficiency"] == pytest.approx(one["s_per_step"] / two["s_per_step"])
    assert two["samples_per_s"] == pytest.approx(2 / two["s_per_step"]) and len(two["peak_gb_per_gpu"]) == 2
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| 32x48x5 | lora | fsdp | 2 | CPU |" in table
