"""bench/caption.py: its random model is the architecture it claims, and the script runs (CPU smoke)."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.mark.slow
def test_random_model_from_meta_matches_a_normally_built_one():
    """Built on meta and materialised with to_empty: same parameter shapes as a model built
    directly, rotary tables rebuilt (not left as garbage), and a finite forward pass."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from frametuner.bench.caption import TEXT_SMOKE, VISION_SMOKE, random_model
    from frametuner.caption.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = random_model(tokenizer, torch.device("cpu"), TEXT_SMOKE, VISION_SMOKE, torch.float32)
    reference = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=dict(TEXT_SMOKE), vision_config=dict(VISION_SMOKE)))
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {name: tuple(p.shape) for name, p in reference.named_parameters()}
    buffers = dict(model.named_buffers())
    for name, buffer in reference.named_buffers():
        if name.endswith("inv_freq"):
            torch.testing.assert_close(buffers[name], buffer)
    std = model.model.language_model.layers[0].mlp.up_proj.weight.std().item()
    assert 0.015 < std < 0.025


def test_7b_config_is_the_documented_architecture():
    from transformers import Qwen2_5_VLConfig

    from frametuner.bench.caption import TEXT_7B, VISION_7B

    config = Qwen2_5_VLConfig(text_config=dict(TEXT_7B), vision_config=dict(VISION_7B))
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (3584, 28, 28, 4)
    assert (text.intermediate_size, text.vocab_size) == (18944, 152064)
    assert (vision.depth, vision.hidden_size, vision.num_heads, vision.out_hidden_size, vision.intermediate_size) == (32, 1280, 16, 3584, 3420)
    with torch.device("meta"):
        from transformers import Qwen2_5_VLForConditionalGeneration

        count = sum(p.numel() for p in Qwen2_5_VLForConditionalGeneration(config).parameters())
    assert 8.2e9 < count < 8.4e9  # Qwen2.5-VL-7B-Instruct: 8.29 B parameters (untied embeddings)


@pytest.mark.slow
def test_bench_smoke_appends_rows(tmp_path, capsys):
    from frametuner.bench.caption import main

    assert main(["--smoke", "--batch_size", "1", "--frames", "2", "--height", "56", "--width", "56", "--tokens", "2",
                 "--batches", "1", "--results-dir", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [row["mode"] for row in rows] == ["bf16", "int8-quanto"]
    assert all("error" not in row and row["clips_per_s"] > 0 and row["new_tokens"] == 2 for row in rows)
    assert "| int8-quanto |" in (tmp_path / "RESULTS.md").read_text()
