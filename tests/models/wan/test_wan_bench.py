"""The GPU benchmark's Wan path, on the CPU with the tiny flavour: what bench/train_step.py and
bench/memory.py build (--family wan) — the model handed to the Trainer, its 24 GB preset's
options (int8 base, block swap, activation offload) — takes steps; and the full-size
T2V-14B is the released size on the meta device."""

from __future__ import annotations

import pytest
import torch

from ...conftest import requires_module


def test_full_size_t2v_14b_is_the_released_model():
    from frametuner.bench.flops import DiTShape
    from frametuner.bench.train_step import build_model

    _, model = build_model(device="meta", family="wan", flavour="t2v-14b")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(14.29e9, rel=1e-3)
    shape = DiTShape.from_model_config(model.config)
    assert (shape.hidden, shape.depth, shape.heads, shape.caption_channels) == (5120, 40, 40, 4096)
    assert len(model.blocks) - 34 == 6  # the 24 GB preset keeps 6 blocks resident


@requires_module("optimum.quanto", "optimum-quanto")
def test_bench_trainer_with_the_24gb_preset_options_steps_on_the_tiny_wan(tmp_path):
    from frametuner.bench.memory import PRESETS
    from frametuner.bench.train_step import OneBatch, bench_config, build_model, text_inputs
    from frametuner.training.trainer import Trainer

    preset = dict(PRESETS["24gb-int8-wan14b"], musubi_blocks_to_swap=1)  # the tiny model has 2 blocks
    _, model = build_model(device="cpu", family="wan", flavour="tiny")
    model = torch.nn.Module.to(model, dtype=torch.float32)
    text, mask = text_inputs(1, compact=True, channels=64, device="cpu")
    batch = {"latents": torch.randn(1, 16, 2, 4, 6), "text": text.float(), "text_mask": mask, "num_cond_latents": 0}
    config = bench_config(tmp_path, "wan", "tiny", mixed_precision="no", gradient_checkpointing_policy="auto", compile_transformer=False, **preset)
    assert config.model_family == "wan" and config.lora_rank == 16
    trainer = Trainer(config, OneBatch(batch), model=model)
    assert type(trainer.model.blocks[0].attn1.to_q.base_layer).__name__ == "QLinear"
    losses = [trainer.step(batch)[0].item() for _ in range(2)]
    assert all(loss == loss and loss > 0 for loss in losses)
    assert trainer.memory.block_swap is not None and trainer.memory.activation_offload is not None
