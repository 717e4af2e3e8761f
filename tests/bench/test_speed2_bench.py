"""The Speed II benchmark (bench/speed2.py) runs end to end on the CPU with the tiny model, so
the one GPU run cannot die on an import, a typo or a wrong shape."""

from __future__ import annotations

import importlib.util
import json

import pytest

from frametuner.bench import speed2

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None


@pytest.fixture
def tiny_cpu(monkeypatch):
    """speed2 on the CPU with the tiny model at a small case, every part's time need zero."""
    monkeypatch.setattr(speed2, "DEVICE", "cpu")
    monkeypatch.setattr(speed2, "FLAVOUR", "tiny")
    monkeypatch.setattr(speed2, "CASE", (32, 48, 9))
    monkeypatch.setattr(speed2, "NEEDS", {part: 0 for part in speed2.NEEDS})


@pytest.mark.slow
def test_speed2_bench_smoke_on_cpu(tmp_path, monkeypatch, tiny_cpu):
    monkeypatch.setattr(speed2, "QUALITY_CASE", (32, 48, 5))
    monkeypatch.setattr(speed2, "COMPILE_ONCE_CASE", (32, 48, 5))
    parts = "f,a,b,c,d,e" if HAS_TORCHAO else "f,a,d,e"
    code = speed2.main(["--parts", parts, "--iters", "2", "--quality-batches", "2", "--results-dir", str(tmp_path)])
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    by_part = {}
    for row in rows:
        by_part.setdefault(row["part"], []).append(row)
    assert [r["kind"] for r in by_part["f"]] == ["compile_once"] and by_part["f"][0]["ratio"] > 0
    assert all(run["step1_s"] > 0 and "build_s" in run for run in by_part["f"][0]["runs"])  # where the time to step 1 goes
    train = by_part["a"][0]
    assert train["kind"] == "train" and train["s_per_step"] > 0 and len(train["times"]) >= 1
    assert train["activation_offload"] is False and train["saved_attention_blocks"] == 0  # a CPU: today's behaviour
    sample = [r for r in by_part["d"] if r["mode"] == "bf16"][0]
    assert sample["kind"] == "sample_cfg" and sample["s_per_step"] > 0
    video = by_part["e"][0]
    assert video["kind"] == "validation_video" and video["steps"] == 16 and video["guidance"] == 1.0 and video["total_s"] > 0
    if HAS_TORCHAO:
        assert code == 0, rows
        assert by_part["b"][0]["mode"] == "fp8_compute-all_but_cross" and by_part["b"][0]["fp8_layers"] > 0  # the config's default
        quality = by_part["c"][0]
        assert len(quality["output_rel_l2"]) == 2 and 0 < quality["output_rel_l2_max"] < 0.5 and quality["grad_cosine_min"] > 0.5
        assert [r["layers"] for r in by_part["c"]] == ["all", "all_but_cross", "ffn"] and quality["fp8_gemm_share"] == 1.0
        assert all(0 < r["fp8_gemm_share"] <= 1 and r["grad_cosine_mean"] <= 1 + 1e-12 for r in by_part["c"])
        assert 0 < by_part["c"][1]["fp8_layers"] < quality["fp8_layers"]  # a group converts fewer layers
        assert [r["mode"] for r in by_part["d"]] == ["bf16", "fp8_compute-all_but_cross"] and video["mode"] == "fp8_compute"
        assert by_part["d"][1]["fp8_layers"] == by_part["b"][0]["fp8_layers"] > 0
    else:
        assert [r["mode"] for r in by_part["d"]] == ["bf16", "fp8_compute"] and "error" in by_part["d"][1]
    assert "| a | 32x48x9 | train | default |" in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCHAO, reason="fp8 needs torchao")
def test_speed2_e_alone_renders_with_fp8_compute(tmp_path, tiny_cpu):
    assert speed2.main(["--parts", "e", "--results-dir", str(tmp_path)]) == 0
    (row,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert (row["part"], row["mode"], row["steps"]) == ("e", "fp8_compute", 16)



@pytest.mark.skipif(not HAS_TORCHAO, reason="fp8 needs torchao")
def test_speed2_fp8_layers_ffn_converts_only_the_feed_forward(tmp_path, monkeypatch, tiny_cpu):
    monkeypatch.setattr(speed2, "FP8_LAYERS", "all")  # main() sets the module's global
    assert speed2.main(["--parts", "b", "--fp8-layers", "ffn", "--iters", "1", "--results-dir", str(tmp_path)]) == 0
    (row,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines() if '"part": "b"' in line]
    blocks = row["blocks"]
    assert row["mode"] == "fp8_compute-ffn" and row["fp8_compute_layers"] == "ffn"
    assert row["fp8_layers"] == 3 * blocks  # w1, w2, w3 of every block, nothing else
