"""Wan through frametuner's memory tools (block swap, group offload, activation offload, a
quantised base), driven by the Trainer: the same losses as the plain run, as for LongCat."""

from __future__ import annotations

import pytest

from tests.training.helpers import synthetic_data, tiny_config

from ...conftest import requires_module

requires_quanto = requires_module("optimum.quanto", "optimum-quanto")


def losses(tmp_path, steps: int = 3, **overrides):
    from frametuner.models.wan.tiny import ensure_tiny_checkpoint
    from frametuner.training.trainer import Trainer

    ensure_tiny_checkpoint("tiny")  # first: writing it must not move the trainer's seeded RNG
    config = tiny_config(tmp_path, model_family="wan", model_flavour="tiny", max_train_steps=steps, **overrides)
    data = synthetic_data(n=1)
    trainer = Trainer(config, data)
    batch = next(iter(data.epoch(0)))
    return [trainer.step(batch)[0].item() for _ in range(steps)], trainer


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return losses(tmp_path_factory.mktemp("plain"))[0]


@pytest.mark.parametrize(
    "options",
    [
        dict(musubi_blocks_to_swap=1),
        dict(enable_group_offload=True),
        dict(gradient_checkpointing_cpu_offload=True),
    ],
    ids=["block-swap", "group-offload", "activation-offload"],
)
def test_wan_lora_training_losses_are_unchanged_by_memory_options(tmp_path, plain, options):
    found, trainer = losses(tmp_path, **options)
    assert found == plain
    assert trainer.memory.places_model == bool(options.get("musubi_blocks_to_swap") or options.get("enable_group_offload"))


@requires_quanto
def test_wan_int8_base_with_swap_and_activation_offload(tmp_path, plain):
    """int8 within the quantisation tolerance of float32; with block swap + activation offload
    on top (the 24 GB preset's combination), exactly the int8 run."""
    int8, trainer = losses(tmp_path / "a", base_model_precision="int8-quanto")
    assert type(trainer.model.blocks[0].attn1.to_q.base_layer).__name__ == "QLinear"
    assert all(abs(a - b) / b < 5e-3 for a, b in zip(int8, plain)), (int8, plain)
    assert int8 != plain
    combined, _ = losses(tmp_path / "b", base_model_precision="int8-quanto", musubi_blocks_to_swap=1, gradient_checkpointing_cpu_offload=True)
    assert combined == int8


def test_blockwise_loading_equals_from_pretrained():
    """The quantise-while-loading path (block by block) gives diffusers' from_pretrained
    weights and dtypes (float32 where diffusers keeps float32 under a bf16 load)."""
    import torch

    from frametuner.models.registry import load_spec
    from frametuner.models.wan.tiny import ensure_tiny_checkpoint

    spec, root = load_spec("wan"), ensure_tiny_checkpoint("tiny")
    reference = spec.load_transformer(root, dtype=torch.bfloat16)
    blockwise = spec.load_transformer(root, dtype=torch.bfloat16, prepare_block=lambda block: block.to("cpu"))
    expected, found = reference.state_dict(), blockwise.state_dict()
    assert expected.keys() == found.keys()
    for name, tensor in expected.items():
        assert found[name].dtype == tensor.dtype, name
        assert torch.equal(found[name], tensor), name
    assert expected["scale_shift_table"].dtype == torch.float32 and expected["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(blockwise.rope.freqs_cos, reference.rope.freqs_cos)
