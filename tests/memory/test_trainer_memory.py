"""The memory options through the Trainer: same losses as the plain run, clear config errors."""

from __future__ import annotations

import importlib
import sys
import types

import pytest

from frametuner.config import TrainConfig
from frametuner.memory import memory_mode
from frametuner.models.longcat_video.tiny import ensure_tiny_checkpoint
from frametuner.training.trainer import Trainer

from ..training.helpers import synthetic_data, tiny_config
from .helpers import requires_quanto


@pytest.fixture(autouse=True)
def lora_room(monkeypatch):
    """``frametuner.lora.add_lora`` (the LoRA room's, or a PEFT stand-in with its signature)."""
    try:
        importlib.import_module("frametuner.lora").add_lora
    except (ImportError, AttributeError):
        from peft import LoraConfig, inject_adapter_in_model

        def add_lora(model, *, rank, alpha, dropout, target_modules):
            names = [f"blocks.{i}.{t}" for i in range(len(model.blocks)) for t in target_modules]
            inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names), model)

        monkeypatch.setitem(sys.modules, "frametuner.lora", types.SimpleNamespace(add_lora=add_lora))


def losses(tmp_path, steps: int = 3, **overrides) -> tuple[list[float], Trainer]:
    # Written first: writing the tiny checkpoint draws from the global RNG after the
    # trainer seeded it, which would change the LoRA initialisation of that one run.
    ensure_tiny_checkpoint()
    config = tiny_config(tmp_path, max_train_steps=steps, **overrides)
    data = synthetic_data(n=1)
    trainer = Trainer(config, data)
    batch = next(iter(data.epoch(0)))
    return [trainer.step(batch)[0].item() for _ in range(steps)], trainer


@pytest.fixture(scope="module")
def plain_lora(tmp_path_factory):
    return losses(tmp_path_factory.mktemp("plain"))[0]


@pytest.mark.parametrize(
    "options",
    [
        dict(musubi_blocks_to_swap=1),
        dict(enable_group_offload=True),
        dict(enable_group_offload=True, group_offload_type="leaf_level"),
        dict(gradient_checkpointing_cpu_offload=True),
    ],
)
def test_lora_training_losses_are_unchanged(tmp_path, plain_lora, options):
    found, trainer = losses(tmp_path, **options)
    assert found == plain_lora
    assert trainer.memory.places_model == bool(options.get("musubi_blocks_to_swap") or options.get("enable_group_offload"))


@requires_quanto
def test_quantised_lora_training(tmp_path, plain_lora):
    """int8: within the quantisation tolerance of bf16/fp32; with swap + activation offload on
    top, exactly the int8 run (and the base streamed in and was quantised while loading)."""
    int8, trainer = losses(tmp_path / "a", base_model_precision="int8-quanto")
    assert type(trainer.model.blocks[0].attn.qkv.base_layer).__name__ == "QLinear"
    assert all(abs(a - b) / b < 5e-3 for a, b in zip(int8, plain_lora)), (int8, plain_lora)
    assert int8[-1] != plain_lora[-1]
    combined, _ = losses(tmp_path / "b", base_model_precision="int8-quanto", musubi_blocks_to_swap=1, gradient_checkpointing_cpu_offload=True)
    assert combined == int8


def test_full_finetuning_with_activation_offload(tmp_path):
    plain, _ = losses(tmp_path / "a", model_type="full")
    offloaded, _ = losses(tmp_path / "b", model_type="full", gradient_checkpointing_cpu_offload=True)
    assert offloaded == plain


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(enable_group_offload=True, musubi_blocks_to_swap=4), "choose one"),
        (dict(model_type="full", musubi_blocks_to_swap=4), "musubi_blocks_to_swap moves frozen base weights"),
        (dict(gradient_checkpointing=False, gradient_checkpointing_cpu_offload=True), "needs gradient_checkpointing: true"),
        (dict(musubi_block_swap_device="cuda"), "musubi_block_swap_device"),
        (dict(enable_group_offload=True, base_model_precision="int4-quanto"), "use musubi_blocks_to_swap with a quanto base"),
        (dict(compile_transformer=True, base_model_precision="int4-quanto"), "leave compile_transformer unset"),
    ],
)
def test_config_rejects_impossible_combinations(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(model_flavour="tiny", **overrides)


def test_too_many_swapped_blocks_name_the_depth(tmp_path):
    with pytest.raises(ValueError, match=r"musubi_blocks_to_swap = 2: must be between 0 and 1 \(the model has 2 blocks"):
        losses(tmp_path, steps=1, musubi_blocks_to_swap=2)


def test_mode_names():
    config = TrainConfig(model_flavour="tiny", base_model_precision="fp8-torchao", musubi_blocks_to_swap=24, gradient_checkpointing_cpu_offload=True)
    assert memory_mode(config) == "fp8-torchao+swap24+actoffload"
    config = TrainConfig(model_flavour="tiny", enable_group_offload=True, group_offload_use_stream=True)
    assert memory_mode(config) == "bf16+groupoffload-block1-stream"


def test_int4_base_and_group_offload_stay_eager_by_default():
    """torch.compile fails on quanto's int4 (tinygemm) weights (H200, torch 2.11: inductor's
    "'TinyGemmWeightQBitsTensor' object has no attribute '_scale'"), and group offload's hooks
    run inside each block's call: an unset compile_transformer leaves those eager on CUDA."""
    import torch

    from frametuner.training.trainer import compiles_by_default

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compiles_by_default(TrainConfig(base_model_precision="int8-quanto"), cuda)
    assert compiles_by_default(TrainConfig(base_model_precision="bf16", musubi_blocks_to_swap=4), cuda)
    assert not compiles_by_default(TrainConfig(base_model_precision="int4-quanto"), cuda)
    assert not compiles_by_default(TrainConfig(enable_group_offload=True), cuda)
    assert not compiles_by_default(TrainConfig(), cpu)
