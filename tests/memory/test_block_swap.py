"""Block swap: bit-identical loss and LoRA gradients, weights really released, bad values rejected."""

from __future__ import annotations

import pytest
import torch

from frametuner.memory import MemoryOptionError, enable_block_swap, quantise_transformer
from frametuner.memory.block_swap import storage_views

from .conftest import DEPTH
from .helpers import assert_same, add_test_lora, loss_and_grads, make_batch, requires_quanto, small_dit, twin


@pytest.fixture(scope="module")
def reference(lora_model):
    return loss_and_grads(lora_model, make_batch())


def held_bytes(block) -> int:
    """Bytes the block's frozen weights occupy right now (0 when swapped out)."""
    return sum(v.untyped_storage().nbytes() for p in block.parameters() if not p.requires_grad for v in storage_views(p))


@pytest.mark.parametrize("blocks_to_swap", [0, 1, DEPTH - 1])
def test_swap_gives_identical_loss_and_gradients(lora_model, reference, blocks_to_swap):
    model = twin(lora_model)
    swap = enable_block_swap(model, blocks_to_swap, "cpu")
    for _ in range(2):  # a second step starts from the state the first one left
        assert_same(loss_and_grads(model, make_batch()), reference)
    if blocks_to_swap == 0:
        assert swap is None
        return
    first = DEPTH - blocks_to_swap
    # Between steps only the first swapped block (prefetched for the next forward) is held.
    assert swap.resident_blocks() == [first]
    for index in range(first + 1, DEPTH):
        assert held_bytes(model.blocks[index]) == 0
    assert held_bytes(model.blocks[first]) > 0
    # Every swapped block streams in for the forward and again for the backward, except
    # the last one (the backward starts with it) and, after the first step, the first one
    # (kept from the previous backward): no transfer is wasted.
    first_step, later_step = 2 * blocks_to_swap - 1, 2 * blocks_to_swap - 2
    assert swap.loads == first_step + later_step


def test_swap_keeps_lora_weights_in_place(lora_model):
    model = twin(lora_model)
    enable_block_swap(model, DEPTH - 1, "cpu")
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.untyped_storage().nbytes() == param.numel() * param.element_size(), name


def test_swap_in_sampling_matches(lora_model):
    model = twin(lora_model)
    swap = enable_block_swap(model, 2, "cpu", training=False)
    batch = {k: v for k, v in make_batch().items() if k != "target"}
    with torch.no_grad():
        expected = lora_model(**batch)
        for _ in range(2):
            assert torch.equal(model(**batch), expected)
    assert swap.resident_blocks() == [DEPTH - 2]  # released after use, first one prefetched again


def test_swap_with_save_attention_policy(lora_model):
    plain = twin(lora_model)
    plain.enable_gradient_checkpointing("save_attention")
    model = twin(plain)
    enable_block_swap(model, 2, "cpu")
    assert_same(loss_and_grads(model, make_batch()), loss_and_grads(plain, make_batch()))


@requires_quanto
def test_swap_of_a_quantised_base_is_exact():
    def build():
        model = small_dit(depth=DEPTH)
        model.requires_grad_(False)
        quantise_transformer(model, "int8-quanto")
        add_test_lora(model)
        model.enable_gradient_checkpointing("full")
        return model

    plain, model = build(), build()
    swap = enable_block_swap(model, 2, "cpu")
    assert held_bytes(model.blocks[DEPTH - 1]) == 0  # int8 data and scales swapped out
    assert_same(loss_and_grads(model, make_batch()), loss_and_grads(plain, make_batch()))
    assert swap.loads > 0


@pytest.mark.parametrize("blocks_to_swap", [DEPTH, DEPTH + 3, -1])
def test_bad_block_counts_are_rejected(lora_model, blocks_to_swap):
    with pytest.raises(MemoryOptionError, match=rf"musubi_blocks_to_swap = {blocks_to_swap}: must be between 0 and {DEPTH - 1}"):
        enable_block_swap(twin(lora_model), blocks_to_swap, "cpu")


def test_training_without_checkpointing_is_rejected(lora_model):
    model = twin(lora_model)
    model.disable_gradient_checkpointing()
    with pytest.raises(MemoryOptionError, match="needs gradient_checkpointing"):
        enable_block_swap(model, 1, "cpu")


def test_full_finetuning_is_rejected():
    model = small_dit(depth=DEPTH)
    model.enable_gradient_checkpointing("full")
    with pytest.raises(MemoryOptionError, match="model_type 'lora'"):
        enable_block_swap(model, 1, "cpu")
