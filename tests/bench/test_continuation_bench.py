"""The continuation benchmark (bench/continuation.py) runs end to end on the CPU with the tiny model:
its rows are written and its KV-cache step is the same maths as the uncached one."""

from __future__ import annotations

import json

import pytest

from frametuner.bench import continuation


@pytest.mark.slow
def test_continuation_bench_smoke_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(continuation, "DEVICE", "cpu")
    monkeypatch.setattr(continuation, "FLAVOUR", "tiny")
    monkeypatch.setattr(continuation, "CASE", (32, 48, 17))  # 5 latent frames
    monkeypatch.setattr(continuation, "COND_FRAMES", 5)  # 2 of them conditioning
    code = continuation.main(["--long-video", "--long-segments", "2", "--long-steps", "1", "--iters", "1", "--warmup", "0", "--offload", "--results-dir", str(tmp_path)])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(row["kind"], row["mode"]) for row in rows] == [
        ("sample_vc_step", "kv-eager"), ("sample_vc_step", "nokv-eager"), ("sample_vc_step", "kv-offload-eager"),
        ("long_video_segment", "eager"), ("long_video_segment", "eager"), ("long_video", "eager"),
    ]
    kv, nokv = rows[0], rows[1]
    assert rows[2]["cache_gb"] == kv["cache_gb"] and "x_kv" in rows[2]
    assert kv["num_cond_latents"] == 2 and kv["noisy_tokens"] == 3 * 2 * 3 and nokv["tokens"] == 5 * 2 * 3
    assert kv["cache_build_s"] is not None and kv["cache_gb"] > 0 and nokv["cache_gb"] == 0
    assert "x_kv" in nokv
    assert rows[-1]["frames"] == 17 + (17 - 5) and rows[-1]["sampler_options"] == {"use_kv_cache": True, "enhance_hf": False, "offload_kv_cache": False}
    assert "| sample_vc_step | kv-eager |" in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.slow
def test_long_video_bench_stops_on_budget_and_resumes(tmp_path, monkeypatch):
    """A long video longer than one command's limit: the first run stops cleanly after a segment
    (budget), the second resumes the segment folder, and the total row sums every segment once."""
    monkeypatch.setattr(continuation, "DEVICE", "cpu")
    monkeypatch.setattr(continuation, "FLAVOUR", "tiny")
    monkeypatch.setattr(continuation, "CASE", (32, 48, 17))
    monkeypatch.setattr(continuation, "COND_FRAMES", 5)
    common = ["--skip-step", "--long-video", "--long-segments", "3", "--long-steps", "1", "--results-dir", str(tmp_path)]
    assert continuation.main(common + ["--long-budget-s", "0"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [row["kind"] for row in rows] == ["long_video_segment"]
    assert continuation.main(common + ["--long-resume"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(row["kind"], row.get("segment")) for row in rows] == [
        ("long_video_segment", 1), ("long_video_segment", 2), ("long_video_segment", 3), ("long_video", None),
    ]
    segment_times = [row["segment_s"] for row in rows[:3]]
    assert rows[-1]["segment_s"] == segment_times and rows[-1]["total_s"] == pytest.approx(sum(segment_times))
    assert rows[-1]["frames"] == 17 + 2 * (17 - 5)
