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
