"""Group offload (diffusers hooks) and activation offload: identical loss and LoRA gradients."""

from __future__ import annotations

import pytest
import torch

from frametuner.memory import MemoryOptionError, enable_activation_offload, enable_group_offload, quantise_transformer

from .conftest import DEPTH
from .helpers import assert_same, loss_and_grads, make_batch, requires_quanto, small_dit, twin


def sgd_steps(model, steps: int = 2) -> list[torch.Tensor]:
    """Losses of a few plain SGD steps on the LoRA weights (each step must see the last update)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    losses = []
    for _ in range(steps):
        loss, grads = loss_and_grads(model, make_batch())
        for param in params:
            param.grad = grads[next(n for n, p in model.named_parameters() if p is param)]
        optimizer.step()
        losses.append(loss)
    return losses


@pytest.mark.parametrize(
    "options",
    [
        dict(offload_type="block_level", blocks_per_group=1),
        dict(offload_type="block_level", blocks_per_group=3),  # a last group shorter than the others
        dict(offload_type="leaf_level"),
    ],
)
def test_group_offload_training_is_exact(lora_model, options):
    model = twin(lora_model)
    offload = enable_group_offload(model, "cpu", **options)
    assert offload is not None and offload.groups
    grouped = {id(p) for group in offload.groups for p in group.parameters}
    assert not any(id(p) in grouped for p in model.parameters() if p.requires_grad)  # LoRA is never offloaded
    assert_same(loss_and_grads(model, make_batch()), loss_and_grads(lora_model, make_batch()))
    # Training moves the LoRA weights; the offloaded model must follow them exactly.
    assert [l.item() for l in sgd_steps(model)] == [l.item() for l in sgd_steps(twin(lora_model))]


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offload_sampling(lora_model, offload_type):
    frozen = twin(lora_model)
    frozen.requires_grad_(False)
    model = twin(lora_model)
    offload = enable_group_offload(model, "cpu", offload_type=offload_type, training=False)
    assert not any(p.requires_grad for p in model.parameters())  # sampling: LoRA weights are offloaded too
    grouped = {id(p) for group in offload.groups for p in group.parameters}
    assert any(id(p) in grouped for n, p in model.named_parameters() if "lora_" in n)
    hooked = model.blocks[0] if offload_type == "block_level" else model.blocks[0].attn.qkv.base_layer
    assert hooked._diffusers_hook.get_hook("group_offloading") is not None
    batch = {k: v for k, v in make_batch().items() if k != "target"}
    with torch.no_grad():
        assert torch.equal(model(**batch), frozen(**batch))


@requires_quanto
def test_group_offload_rejects_bad_settings(lora_model):
    with pytest.raises(MemoryOptionError, match="group_offload_use_stream needs a CUDA device"):
        enable_group_offload(twin(lora_model), "cpu", use_stream=True)
    with pytest.raises(MemoryOptionError, match="group_offload_type 'sideways'"):
        enable_group_offload(twin(lora_model), "cpu", offload_type="sideways")
    with pytest.raises(MemoryOptionError, match="group_offload_blocks_per_group = 0"):
        enable_group_offload(twin(lora_model), "cpu", blocks_per_group=0)
    with pytest.raises(MemoryOptionError, match="'leaf_level' moves each layer on its own"):
        enable_group_offload(twin(lora_model), "cpu", offload_type="leaf_level", use_stream=True)
    full = small_dit(depth=DEPTH)
    full.enable_gradient_checkpointing("full")
    with pytest.raises(MemoryOptionError, match="model_type 'lora'"):
        enable_group_offload(full, "cpu")
    quantised = small_dit(depth=DEPTH)
    quantised.requires_grad_(False)
    quantise_transformer(quantised, "int8-quanto")
    with pytest.raises(MemoryOptionError, match="cannot move optimum-quanto weights.*musubi_blocks_to_swap"):
        enable_group_offload(quantised, "cpu")


def test_activation_offload_is_exact_and_offloads_only_block_inputs(lora_model):
    model = twin(lora_model)
    offload = enable_activation_offload(model, "cpu")
    reference = loss_and_grads(lora_model, make_batch())
    for step in range(2):
        assert_same(loss_and_grads(model, make_batch()), reference)
        assert offload.packed == DEPTH * (step + 1)  # one hidden-states tensor per block, nothing else
        assert offload.prefetched == (DEPTH - 1) * (step + 1)  # each restore started the previous block's copy


def test_activation_offload_composes_with_full_finetuning_and_save_attention():
    plain = small_dit(depth=DEPTH)
    plain.enable_gradient_checkpointing("save_attention")
    plain.train()
    model = twin(plain)
    enable_activation_offload(model, "cpu")
    assert_same(loss_and_grads(model, make_batch()), loss_and_grads(plain, make_batch()))


def test_activation_offload_needs_checkpointing(lora_model):
    model = twin(lora_model)
    model.disable_gradient_checkpointing()
    with pytest.raises(MemoryOptionError, match="needs gradient_checkpointing"):
        enable_activation_offload(model, "cpu")


def test_activation_offload_releases_the_device_copies_of_block_inputs(lora_model):
    """The point of offloading: after the forward, no block's input is still held on the
    device side (only its host copy). Checkpointing that keeps its inputs in a recompute
    closure defeats this, and so does a pack hook that holds the tensor (autograd keeps
    pack hooks until the backward). Block outputs are the next blocks' inputs; the check
    is on their storage: the Python tensor object dies even while its memory is held."""
    import gc
    import weakref

    model = twin(lora_model)
    enable_activation_offload(model, "cpu")
    outputs = []
    hooks = [block.register_forward_hook(lambda m, i, o: outputs.append(weakref.ref(o.untyped_storage()))) for block in model.blocks]
    batch = make_batch()
    inputs = {key: value for key, value in batch.items() if key != "target"}
    prediction = model(**inputs)
    for hook in hooks:
        hook.remove()
    gc.collect()
    alive = [index for index, ref in enumerate(outputs[:-1]) if ref() is not None]
    assert alive == [], f"inputs of blocks {[i + 1 for i in alive]} are still referenced after the forward"
    (prediction.float() - batch["target"]).pow(2).mean().backward()  # and the backward still works


def test_activation_offload_restores_the_saved_layout():
    """A compiled backward asserts the strides of what it saved: the host round trip keeps them."""
    model = small_dit(depth=2).train()
    model.enable_gradient_checkpointing()
    offload = enable_activation_offload(model, "cpu")
    hidden = torch.randn(1, 6, 4).transpose(1, 2).contiguous().transpose(1, 2)  # [1, 6, 4], strides (24, 1, 6)
    offload.forward_pre(0)
    restored = offload._restore(offload._offload(hidden))
    assert restored.stride() == hidden.stride() and torch.equal(restored, hidden)
